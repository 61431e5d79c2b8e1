"""ZeRO stage 3 features on 2 ranks: activation checkpointing (both modes), a module called in a
loop, offload of params and optimizer, bf16, zero.Init, GatheredParameters, state_dict rules.

Each test is one launch that runs several checks, to keep the suite fast on 2 cores.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tests.distributed.launcher import run_distributed
from tests.distributed.parity import reference_run
from tests.distributed.test_stage3_parity import LR, _assert_parity, stage3_run

IN, WIDTH, CLASSES = 6, 20, 3


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(WIDTH, 33)
        self.fc2 = torch.nn.Linear(33, WIDTH)

    def forward(self, h):
        return h + self.fc2(F.gelu(self.fc1(h)))


class CheckpointNet(torch.nn.Module):
    """Three blocks, each run under torch.utils.checkpoint (reentrant or not)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.inp = torch.nn.Linear(IN, WIDTH)
        self.blocks = torch.nn.ModuleList([Block() for _ in range(3)])
        self.out = torch.nn.Linear(WIDTH, CLASSES)

    def forward(self, x, y):
        h = self.inp(x)
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=self.reentrant)
        return F.cross_entropy(self.out(h), y)


class LoopNet(torch.nn.Module):
    """One block applied three times, plus a weight read directly by the parent."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(IN, WIDTH)
        self.shared = Block()
        self.out = torch.nn.Linear(WIDTH, CLASSES)

    def forward(self, x, y):
        h = self.inp(x)
        for _ in range(3):
            h = self.shared(h)
        h = h + 0.1 * (h @ self.shared.fc2.weight @ self.shared.fc1.weight)  # used outside its module
        return F.cross_entropy(self.out(h), y)


MODELS = {"reentrant": lambda: CheckpointNet(True), "non_reentrant": lambda: CheckpointNet(False), "loop": LoopNet}


def _batch(step: int, rows: int):
    g = torch.Generator().manual_seed(77 + step)
    return torch.randn(rows, IN, generator=g), torch.randint(0, CLASSES, (rows,), generator=g)


def _reference(kind: str, steps: int, rows: int):
    torch.manual_seed(5)
    model = MODELS[kind]()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    losses = []
    for step in range(steps):
        loss = model(*_batch(step, rows))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def _small_model_runs(kinds, steps, micro):
    import zerospeed
    from zerospeed import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    out = {}
    for kind in kinds:
        torch.manual_seed(5)
        model = MODELS[kind]()
        config = {"train_micro_batch_size_per_gpu": micro, "gradient_clipping": 0.5, "steps_per_print": 1000,
                  "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.01}},
                  "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
        engine, _, _, _ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        losses = []
        for step in range(steps):
            x, y = _batch(step, micro * world)
            loss = engine(x[rank * micro:(rank + 1) * micro], y[rank * micro:(rank + 1) * micro])
            engine.backward(loss)
            engine.step()
            total = loss.detach().clone()
            comm.all_reduce(total)
            losses.append(float(total) / world)
        with zerospeed.zero.GatheredParameters(list(model.parameters())):
            params = {n: p.detach().clone() for n, p in model.named_parameters()}
        out[kind] = (losses, params)
    return out


def test_activation_checkpointing_and_looped_module():
    steps, micro = 8, 3
    results = run_distributed(_small_model_runs, 2, list(MODELS), steps, micro)
    for kind in MODELS:
        reference = _reference(kind, steps, 2 * micro)
        for rank_result in results:
            _assert_parity((*rank_result[kind], None), reference)


def _offload_and_bf16():
    offload = {"stage3_param_persistence_threshold": 10,
               "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}
    moved = stage3_run(6, 2, 2, LR, 0.5, True, offload)
    bf16 = stage3_run(6, 2, 1, LR, 0.0, False, {"stage3_param_persistence_threshold": 10}, {"bf16": {"enabled": True}})
    return moved, bf16


def test_offload_and_bf16():
    results = run_distributed(_offload_and_bf16, 2)
    moved, bf16 = results[0]
    _assert_parity(moved, reference_run(6, 2, 2, 2, LR, 0.5, True))
    assert moved[2]["memory"]["master"] == 0  # fp32 shards on the CPU tier are the masters themselves
    reference = reference_run(6, 2, 2, 1, LR, 0.0, False)
    assert bf16[0] == pytest.approx(reference[0], rel=3e-2)
    assert bf16[2]["memory"]["master"] > 0 and bf16[2]["skipped_steps"] == 0


class AppliedInitNet(torch.nn.Module):
    """Children are partitioned as they are attached; the parent then re-initializes them with
    `self.apply` (as transformers' `post_init` does): values drawn on each rank differ, rank 0's win."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(IN, WIDTH)
        self.blocks = torch.nn.ModuleList([Block() for _ in range(2)])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, torch.nn.Linear):
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.fill_(0.5)


def _init_with_module_apply():
    import zerospeed
    from zerospeed import comm

    rank = comm.get_rank()
    original_apply = torch.nn.Module.apply
    torch.manual_seed(3)
    reference = AppliedInitNet()  # no Init: what rank 0 builds
    torch.manual_seed(3 + rank)  # every rank draws different values: Init must keep rank 0's
    with zerospeed.zero.Init():
        patched = torch.nn.Module.apply is not original_apply
        model = AppliedInitNet()
    facts = {"patched_inside": patched, "restored_after": torch.nn.Module.apply is original_apply,
             "partitioned": all(p.data.numel() == 0 for p in model.parameters())}
    with zerospeed.zero.GatheredParameters(list(model.parameters())):
        values = {n: p.detach().clone() for n, p in model.named_parameters()}
    facts["biases_applied"] = all(bool((v == 0.5).all()) for n, v in values.items() if n.endswith("bias"))
    facts["rank0_values"] = all(torch.equal(values[n], p) for n, p in reference.named_parameters()) if rank == 0 else None
    facts["values"] = values
    return facts


def test_zero_init_module_apply_initializes_partitioned_children():
    results = run_distributed(_init_with_module_apply, 2)
    for facts in results:
        assert facts["patched_inside"] and facts["restored_after"] and facts["partitioned"]
        assert facts["biases_applied"]
    assert results[0]["rank0_values"]
    for name, value in results[0]["values"].items():
        assert torch.equal(results[1]["values"][name], value), name  # every rank holds rank 0's values


def _init_and_gathered():
    import zerospeed
    from zerospeed import comm
    from zerospeed.errors import EngineError
    from zerospeed.zero.stage3 import gather_full_state_dict
    from tests.distributed.parity import make_model

    rank, world = comm.get_rank(), comm.get_world_size()
    facts = {}
    with zerospeed.zero.Init():
        model = make_model()
    expected = {n: math.ceil(p.ds_numel / world) for n, p in model.named_parameters()}
    facts["init_shards"] = {n: p.ds_tensor.numel() for n, p in model.named_parameters()} == expected
    facts["init_empty"] = all(p.data.numel() == 0 for p in model.parameters())
    facts["attrs"] = all(hasattr(p, a) for p in model.parameters()
                         for a in ("ds_shape", "ds_numel", "ds_tensor", "ds_id", "ds_status"))
    full_ref = make_model()  # the same seed without Init: Init must hold the same weights
    with zerospeed.zero.GatheredParameters(list(model.parameters())):
        facts["init_weights_equal"] = all(torch.equal(p, dict(full_ref.named_parameters())[n])
                                          for n, p in model.named_parameters())
    facts["released_after_gather"] = all(p.data.numel() == 0 for p in model.parameters())
    # modifier_rank: rank 0's change reaches every rank and the shards
    weight = model.up.weight
    with zerospeed.zero.GatheredParameters(weight, modifier_rank=0):
        if rank == 0:
            weight.data.fill_(0.25)
    with zerospeed.zero.GatheredParameters(weight):
        facts["modified_everywhere"] = bool((weight == 0.25).all())
    facts["shard_updated"] = bool((weight.ds_tensor[: weight.ds_numel - rank * weight.ds_tensor.numel()] == 0.25).all())
    try:
        model.state_dict()
        facts["state_dict_raises"] = False
    except EngineError as error:
        facts["state_dict_raises"] = "GatheredParameters" in str(error) and "embed.weight" in str(error)
    full = gather_full_state_dict(model)
    facts["full_state_dict"] = sorted(full) == sorted(full_ref.state_dict()) and \
        all(t.shape == full_ref.state_dict()[k].shape for k, t in full.items())
    return facts


def test_zero_init_gathered_parameters_and_state_dict():
    results = run_distributed(_init_and_gathered, 2)
    for facts in results:
        assert all(facts.values()), facts


def _init_training():
    return stage3_run(6, 2, 1, LR, 0.5, True, {"stage3_param_persistence_threshold": 0}, use_init=True)


def test_zero_init_trains_like_without_init():
    results = run_distributed(_init_training, 2)
    for result in results:
        _assert_parity(result, reference_run(6, 2, 2, 1, LR, 0.5, True))
