"""DeepSpeed's `deepspeed.runtime.utils` helpers that user scripts call: memory report, gradient clipping."""

from __future__ import annotations

import gc
import math
from typing import Iterable

import torch

from zerospeed import comm
from zerospeed.accelerator import get_accelerator

GB = 1024**3


def see_memory_usage(message: str, force: bool = False) -> None:
    """Print `message` and this rank's device and host memory, on rank 0, only when `force` is True.

    DeepSpeed's call sites pass `force=False` by default and print nothing; a user forcing a
    report expects to see it, so it is printed, as DeepSpeed does, not logged at info level
    (which zerospeed's default log level would hide).
    """
    if not force or comm.get_rank() != 0:
        return
    gc.collect()  # count only memory still referenced
    accelerator = get_accelerator()
    device = (f"MA {accelerator.memory_allocated() / GB:.2f} GB  Max_MA {accelerator.max_memory_allocated() / GB:.2f} GB  "
              f"CA {accelerator.memory_reserved() / GB:.2f} GB")
    print(message, flush=True)
    print(device, flush=True)
    try:
        import psutil

        memory = psutil.virtual_memory()
        print(f"CPU Virtual Memory:  used = {(memory.total - memory.available) / GB:.2f} GB, "
              f"percent = {memory.percent}%", flush=True)
    except ImportError:  # psutil is optional: the device line is the main report
        pass
    accelerator.reset_peak_memory_stats()  # the next report's peak starts here, as in DeepSpeed


def is_model_parallel_parameter(param: torch.Tensor) -> bool:
    """Whether `param` is split across tensor-parallel ranks (Megatron's attributes)."""
    return bool(getattr(param, "model_parallel", False) or getattr(param, "tensor_model_parallel", False))


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2, mpu=None) -> torch.Tensor:
    """Scale `.grad` of `parameters` so their global `norm_type`-norm is at most `max_norm`; return the norm.

    DeepSpeed's version of torch's: with an `mpu`, a parameter replicated across tensor-parallel
    ranks counts once and the norm covers the whole model-parallel group. The norm is then
    averaged over the data-parallel group, as DeepSpeed does (MoE parameters differ per rank).
    """
    with_grads = [p for p in _as_list(parameters) if p.grad is not None]
    grads = [p.grad for p in with_grads]
    if not grads:
        return torch.zeros(())
    norm_type = float(norm_type)
    group = mpu.get_model_parallel_group() if mpu is not None else None
    if math.isinf(norm_type):
        total = torch.stack([g.detach().abs().max().float() for g in grads]).max()
        if group is not None:
            comm.all_reduce(total, op=comm.ReduceOp.MAX, group=group)
    else:
        counted = [p.grad for p in with_grads
                   if mpu is None or mpu.get_model_parallel_rank() == 0 or is_model_parallel_parameter(p)]
        norms = [g.detach().float().norm(norm_type) for g in counted]
        total = torch.stack(norms).pow(norm_type).sum() if norms else torch.zeros((), device=grads[0].device)
        if group is not None:
            comm.all_reduce(total, group=group)
        total = total.pow(1.0 / norm_type)
    total = _average_over_data_parallel(total)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads:
        grad.detach().mul_(coefficient.to(grad.device, grad.dtype))
    return total


def _average_over_data_parallel(value: torch.Tensor) -> torch.Tensor:
    if not comm.is_initialized():
        return value
    from zerospeed.utils import groups

    group = groups._get_data_parallel_group()
    size = comm.get_world_size(group)
    if size > 1:
        value = value / size
        comm.all_reduce(value, group=group)
    return value


def _as_list(parameters) -> list[torch.Tensor]:
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return list(parameters) if isinstance(parameters, Iterable) else [parameters]


__all__ = ["clip_grad_norm_", "is_model_parallel_parameter", "see_memory_usage"]
