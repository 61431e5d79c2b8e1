"""`deepspeed.utils.groups` on 2 ranks: the data-parallel group, size and rank without an mpu
(the world), with a Megatron-style mpu handed to initialize(), and clip_grad_norm_ over them."""

from __future__ import annotations

import math

import torch

from tests.distributed.launcher import run_distributed


class TwoWayModelParallel:
    """A Megatron-style mpu for 2 ranks: both hold one model split in two (model parallel 2, data parallel 1)."""

    def __init__(self, rank: int) -> None:
        from zerospeed import comm

        singles = [comm.new_group([0]), comm.new_group([1])]  # every rank creates every group, in one order
        self.rank = rank
        self.data_group = singles[rank]
        self.model_group = comm.new_group([0, 1])

    def get_data_parallel_group(self):
        return self.data_group

    def get_data_parallel_world_size(self) -> int:
        return 1

    def get_data_parallel_rank(self) -> int:
        return 0

    def get_data_parallel_group_ranks(self) -> list[int]:
        return [self.rank]

    def get_model_parallel_group(self):
        return self.model_group

    def get_model_parallel_world_size(self) -> int:
        return 2

    def get_model_parallel_rank(self) -> int:
        return self.rank


def groups_run() -> dict:
    import torch.distributed as dist

    import zerospeed
    from zerospeed import comm
    from zerospeed.runtime.utils import clip_grad_norm_
    from zerospeed.utils import groups

    rank = comm.get_rank()
    out: dict = {}
    # without an mpu: the world
    group = groups._get_data_parallel_group()
    out["world"] = (groups._get_data_parallel_world_size(), groups._get_data_parallel_rank(),
                    groups._get_data_parallel_group_ranks(), groups._get_broadcast_src_rank(),
                    groups.get_data_parallel_world_size(), groups.get_data_parallel_rank())
    out["world_group_usable"] = (dist.get_global_rank(group, 1), dist.get_process_group_ranks(group))
    total = torch.tensor([float(rank + 1)])
    comm.all_reduce(total, group=groups.get_data_parallel_group())
    out["world_sum"] = total.item()
    out["tp_without_mpu"] = (groups.get_tensor_model_parallel_world_size(), groups.get_tensor_model_parallel_rank(),
                             groups._get_model_parallel_world_size(), groups._get_sequence_data_parallel_world_size())

    # replicated gradients on both data-parallel ranks: the averaged norm is the local one
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(2)]
    for param in params:
        param.grad = torch.full_like(param, 2.0)
    out["clip_world"] = float(clip_grad_norm_(params, max_norm=1.0))

    # with an mpu given to initialize()
    mpu = TwoWayModelParallel(rank)
    model = torch.nn.Linear(3, 2)
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    engine, *_ = zerospeed.initialize(model=model, config=config, mpu=mpu)
    out["mpu_is_set"] = groups.mpu is mpu
    out["mpu"] = (groups._get_data_parallel_world_size(), groups._get_data_parallel_rank(),
                  groups._get_data_parallel_group_ranks(), groups._get_model_parallel_world_size(),
                  groups.get_model_parallel_rank())
    out["mpu_group_is_mpus"] = groups._get_data_parallel_group() is mpu.data_group
    out["engine_dp"] = (engine.dp_world_size, engine.mp_world_size, engine.get_model_parallel_rank())

    # replicated parameters count once (model-parallel rank 0); a split one counts on every rank
    replicated = torch.nn.Parameter(torch.zeros(4))
    replicated.grad = torch.full((4,), 1.0)
    split = torch.nn.Parameter(torch.zeros(2))
    split.tensor_model_parallel = True
    split.grad = torch.full((2,), float(rank + 1))
    out["clip_mpu"] = float(clip_grad_norm_([replicated, split], max_norm=100.0, mpu=mpu))
    return out


def test_groups_follow_the_world_then_the_mpu():
    results = run_distributed(groups_run, 2, timeout=120)
    for rank, out in enumerate(results):
        assert out["world"] == (2, rank, [0, 1], 0, 2, rank)
        assert out["world_group_usable"] == (1, [0, 1])
        assert out["world_sum"] == 3.0
        assert out["tp_without_mpu"] == (1, 0, 1, 2)
        assert math.isclose(out["clip_world"], math.sqrt(24 * 4.0), rel_tol=1e-6)
        assert out["mpu_is_set"] and out["mpu_group_is_mpus"]
        assert out["mpu"] == (1, 0, [rank], 2, rank)
        assert out["engine_dp"] == (1, 2, rank)
        assert math.isclose(out["clip_mpu"], math.sqrt(4 * 1.0 + 2 * 1.0 + 2 * 4.0), rel_tol=1e-6)
