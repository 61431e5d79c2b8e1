"""Assemble stages 0-2: buckets from param groups, the reducer, master ranges, optimizer.

The engine hands over normalised param groups and a factory for the torch optimizer;
this module decides the bucket layout (reverse registration order per group, launched
in the order backward completes them) and returns the `ZeroOptimizer`.
"""

from __future__ import annotations

from typing import Callable

import torch

from zerospeed.runtime.precision import LossScaler, PrecisionPolicy
from zerospeed.zero.flat import FlatBucket, bucket_layout, flatten_copy, plan_buckets
from zerospeed.zero.grad_reducer import GradReducer, ReducePlan
from zerospeed.zero.offload import build_optimizer_tier
from zerospeed.zero.partitioned_optimizer import MasterRange, OffloadPolicy, ZeroOptimizer

# Buckets larger than this only delay the first collective (no overlap) and cost memory;
# DeepSpeed's reduce_bucket_size default (5e8) is an upper bound we honour, not a target.
MAX_BUCKET_NUMEL = 1 << 23


def _bucket_params(groups: list[dict], module: torch.nn.Module, bucket_numel: int) -> list[tuple[int, list]]:
    """(group index, params) per bucket, in the order backward completes them."""
    position = {id(p): i for i, p in enumerate(module.parameters())}
    last = len(position)
    planned = []
    for group_index, group in enumerate(groups):
        params = sorted(group["params"], key=lambda p: -position.get(id(p), last))
        for indices in plan_buckets([p.numel() for p in params], bucket_numel):
            members = [params[i] for i in indices]
            # A bucket is complete once its earliest-registered parameter has its gradient.
            completes_at = max(last - position.get(id(p), last) for p in members)
            planned.append((completes_at, group_index, members))
    planned.sort(key=lambda item: (item[0], item[1]))
    return [(group_index, members) for _, group_index, members in planned]


def build_zero_optimizer(
    module: torch.nn.Module,
    groups: list[dict],
    make_inner: Callable[[list[dict]], torch.optim.Optimizer],
    *,
    stage: int,
    reduce_bucket_size: int,
    policy: PrecisionPolicy,
    loss_scaler: LossScaler,
    clip_norm: float,
    offload: OffloadPolicy,
    world_size: int,
    rank: int,
    predivide: float,
    accelerator,
    zero_config=None,
    dp_group=None,
    model_parallel_group=None,
) -> ZeroOptimizer:
    """Flatten `groups` into buckets and build the optimizer that steps on them.

    `groups` are dicts with "params" (trainable, deduplicated) and optimizer options;
    `make_inner(master_groups)` returns the torch optimizer over master pieces.
    `dp_group` is the data-parallel group gradients are reduced over (None: the world);
    `model_parallel_group` holds the ranks with *other* parameters (pipeline stages), over
    which the gradient norm is summed too.
    Stage 3 is built by `zero.stage3.builder` from the same arguments plus the stage-3
    knobs of `zero_config` (the validated zero_optimization section).
    """
    if stage == 3:
        from zerospeed.zero.stage3.builder import Stage3Settings, build_stage3_optimizer

        return build_stage3_optimizer(
            module, groups, make_inner, policy=policy, loss_scaler=loss_scaler, clip_norm=clip_norm,
            offload=offload, world_size=world_size, rank=rank, predivide=predivide, accelerator=accelerator,
            settings=Stage3Settings.from_config(zero_config), group=dp_group,
        )
    names = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    bucket_numel = max(1, min(int(reduce_bucket_size), MAX_BUCKET_NUMEL))
    total_numel = sum(p.numel() for g in groups for p in g["params"])
    tier = build_optimizer_tier(offload, expected_numel=-(-total_numel // world_size), group=dp_group)
    bucket_numel = min(bucket_numel, tier.bucket_numel_limit(world_size) or bucket_numel)
    buckets, masters, master_group = [], [], []
    for group_index, params in _bucket_params(groups, module, bucket_numel):
        layout = bucket_layout([p.numel() for p in params], world_size)
        initial = flatten_copy(params, layout, torch.float32) if policy.param_dtype != params[0].dtype else None
        bucket = FlatBucket(params, [names.get(id(p), "<external>") for p in params], world_size, rank, policy.param_dtype)
        buckets.append(bucket)
        masters.append(MasterRange(bucket, stage, offload, accelerator, initial_fp32=initial))
        tier.add(masters[-1])  # NVMe: written to its swap file, memory released
        master_group.append(group_index)
    plan = ReducePlan(
        stage=stage,
        world_size=world_size,
        accum_dtype=policy.grad_accum_dtype,
        comm_dtype=policy.comm_dtype,
        predivide=predivide,
        postdivide=world_size / predivide,
        group=dp_group,
    )
    reducer = GradReducer(buckets, plan)
    master_groups = []
    for group_index, group in enumerate(groups):
        options = {k: v for k, v in group.items() if k != "params"}
        pieces = [piece for m, g in zip(masters, master_group) if g == group_index for piece in m.pieces]
        master_groups.append({"params": pieces, **options})
    inner = make_inner(master_groups)
    return ZeroOptimizer(
        inner, masters, reducer, stage, loss_scaler, clip_norm, dp_group=dp_group, model_parallel_group=model_parallel_group,
        tier=tier,
    )
