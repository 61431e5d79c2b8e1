"""Tied weights across stages: sum their gradients over the holders, count them once in the norm.

Both work on the ZeRO stage 0/1 optimizer's buffers (zero/grad_reducer.py): before the
data-parallel reduction a bucket's full-size `accum` buffer holds this rank's summed
micro-batch gradients, and after it `grad_view(i)` holds the reduced gradients of the
range `masters[i].range` of bucket i.
"""

from __future__ import annotations

import math

import torch

from zerospeed import comm
from zerospeed.pipe.p2p import PipelineError


def reduce_tied_grads(optimizer, weights_and_groups) -> None:
    """All-reduce each tied weight's accumulated gradient over the stages holding a copy."""
    for weight, group in weights_and_groups:
        if weight.requires_grad:
            comm.all_reduce(accumulated_grad(optimizer, weight), group=group)


def accumulated_grad(optimizer, param: torch.nn.Parameter) -> torch.Tensor:
    """The view of `param`'s gradient in the reducer's full-bucket accumulation buffer (stages 0/1)."""
    for state in optimizer.reducer.states:
        for index, candidate in enumerate(state.bucket.params):
            if candidate is param:
                offset, numel = state.bucket.layout.offsets[index], state.bucket.layout.numels[index]
                return state.accum[offset : offset + numel]
    raise PipelineError("a tied weight is not in the optimizer's buckets; pass every parameter to initialize()")


def _replica_sumsq(optimizer, replicas: list[torch.nn.Parameter]) -> torch.Tensor:
    """Squared norm of this rank's share of the replicas' reduced gradients."""
    wanted = {id(p) for p in replicas}
    total = torch.zeros((), dtype=torch.float32)
    for master_index, master in enumerate(optimizer.masters):
        bucket, (low, high) = master.bucket, master.range
        reduced = optimizer.reducer.grad_view(master_index)
        for index, param in enumerate(bucket.params):
            if id(param) not in wanted:
                continue
            start = max(bucket.layout.offsets[index], low)
            end = min(bucket.layout.offsets[index] + bucket.layout.numels[index], high)
            if start < end:
                total += reduced[start - low : end - low].float().pow(2).sum().cpu()
    return total


def count_replicas_once_in_norm(optimizer, replicas: list[torch.nn.Parameter]) -> None:
    """Make the gradient norm count each tied weight once, as DeepSpeed's ds_pipe_replicated does.

    The optimizer sums squared gradients over every stage; the copies of a tied weight on
    the stages after its first holder are subtracted (reduced the same way, so every rank
    issues the same collectives).
    """
    if optimizer is None:
        return
    summed = optimizer._global_grad_sumsq

    def without_replicas() -> torch.Tensor:
        total = summed()
        extra = _replica_sumsq(optimizer, replicas).to(total.device)
        if optimizer.stage >= 1 and comm.get_world_size(optimizer.dp_group) > 1:
            comm.all_reduce(extra, group=optimizer.dp_group)
        if optimizer.model_parallel_group is not None and comm.get_world_size(optimizer.model_parallel_group) > 1:
            comm.all_reduce(extra, group=optimizer.model_parallel_group)
        if not math.isfinite(float(total)):
            return total
        return (total - extra).clamp_min(0.0)

    optimizer._global_grad_sumsq = without_replicas
