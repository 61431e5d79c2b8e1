"""The NVMe optimizer tier in one process: chunked, swapped AdamW steps equal in-memory ones
bit for bit; states survive swap-out; materialized() exposes and adopts states (checkpoints)."""

import os
import shutil
import tempfile

import pytest
import torch

from zerospeed.errors import EngineError
from zerospeed.io import IOPolicy
from zerospeed.zero.offload import NVMeSettings
from zerospeed.zero.offload.nvme import NVMeOptimizerTier
from zerospeed.zero.partitioned_optimizer import _stepping_only


class Master:
    """What the tier needs of a master: fp32 `weights` and optimizer `pieces` viewing it."""

    def __init__(self, values: torch.Tensor, cuts: list[int]) -> None:
        self.weights = values.clone()
        bounds = [0, *cuts, values.numel()]
        self.pieces = [self.weights[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.fixture
def swap_root():
    path = tempfile.mkdtemp(prefix="zs-tier-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _masters(seed=0):
    torch.manual_seed(seed)
    return [Master(torch.randn(n), cuts) for n, cuts in ((700, [100, 333]), (50, []), (1500, [1499]), (9, [4]))]


def _grads(step, masters):
    generator = torch.Generator().manual_seed(step)
    return [[torch.randn(p.numel(), generator=generator) for p in m.pieces] for m in masters]


def _tier(root, **options):
    settings = NVMeSettings(io=IOPolicy(block_size=8192, queue_depth=2, threads=2), optimizer_path=root,
                            **{"sub_group_size": 800, "buffer_count": 2, **options})
    return NVMeOptimizerTier(settings, rank=0, expected_numel=3000)


@pytest.mark.parametrize("pipeline", [False, True])
def test_swapped_steps_equal_in_memory_steps(swap_root, pipeline):
    reference = _masters()
    swapped = _masters()
    ref_opt = torch.optim.AdamW([p for m in reference for p in m.pieces], lr=1e-2, weight_decay=0.1)
    tier = _tier(swap_root, pipeline_read=pipeline, pipeline_write=pipeline)
    for master in swapped:
        tier.add(master)
    assert tier.num_chunks == 3  # sub_group_size 800: [700 + 50] [1500 alone] [9]
    opt = torch.optim.AdamW([p for m in swapped for p in m.pieces], lr=1e-2, weight_decay=0.1)
    tier.attach(opt)
    assert all(p.numel() == 0 for m in swapped for p in m.pieces)  # nothing resident between steps
    for step in range(4):
        grads = _grads(step, reference)
        for master, master_grads in zip(reference, grads):
            for piece, grad in zip(master.pieces, master_grads):
                piece.grad = grad.clone()
        ref_opt.step()
        by_master = {id(m): g for m, g in zip(swapped, grads)}
        for index in range(tier.num_chunks):
            masters = tier.swap_in(index)
            for master in masters:
                for piece, grad in zip(master.pieces, by_master[id(master)]):
                    piece.grad = grad.clone()
            with _stepping_only(opt, [p for m in masters for p in m.pieces]):
                opt.step()
            tier.swap_out(index)
        tier.finish()
    with tier.materialized():
        for ref, mine in zip(reference, swapped):
            assert torch.equal(ref.weights, mine.weights)
            for ref_piece, piece in zip(ref.pieces, mine.pieces):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(ref_opt.state[ref_piece][key], opt.state[piece][key]), key
    assert all(p.numel() == 0 for m in swapped for p in m.pieces)
    assert tier.io.stats.bytes_read > 0 and tier.io.stats.bytes_written > 0
    tier.close()
    assert not os.listdir(swap_root)


def test_states_replaced_inside_materialized_are_kept(swap_root):
    masters = _masters()
    tier = _tier(swap_root)
    for master in masters:
        tier.add(master)
    opt = torch.optim.AdamW([p for m in masters for p in m.pieces], lr=1e-2)
    tier.attach(opt)
    with tier.materialized():  # what a checkpoint load does: new weights, new state dicts
        for master in masters:
            master.weights.fill_(0.5)
            for piece in master.pieces:
                opt.state[piece] = {"step": torch.tensor(7.0), "exp_avg": torch.full((piece.numel(),), 2.0),
                                    "exp_avg_sq": torch.full((piece.numel(),), 3.0)}
    with tier.materialized([masters[2]]):  # only that master's chunk comes in
        assert masters[2].weights.eq(0.5).all() and masters[0].weights.numel() == 0
        piece = masters[2].pieces[0]
        assert opt.state[piece]["exp_avg"].eq(2.0).all() and opt.state[piece]["exp_avg_sq"].eq(3.0).all()
        assert float(opt.state[piece]["step"]) == 7.0
    tier.close()


def test_reading_pieces_outside_materialized_is_refused(swap_root):
    tier = _tier(swap_root)
    tier.add(_masters()[0])
    tier.attach(torch.optim.AdamW([torch.zeros(1)]))
    with pytest.raises(EngineError, match="materialized"):
        tier.require_resident("logical_pieces()")
    with tier.materialized():
        tier.require_resident("logical_pieces()")
    tier.close()
