"""Make every rank start from rank 0's weights, as DeepSpeed does at initialize()."""

from __future__ import annotations

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from zerospeed import comm


def broadcast_module_state(module: torch.nn.Module, group=None) -> None:
    """Broadcast all parameters and buffers from the group's first rank, one collective per dtype."""
    if comm.get_world_size(group) == 1:
        return
    src = comm.get_global_rank(group, 0)
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) in seen or tensor.numel() == 0:
            continue
        seen.add(id(tensor))
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for dtype in sorted(by_dtype, key=str):
        same_dtype = by_dtype[dtype]
        flat = _flatten_dense_tensors(same_dtype)
        comm.broadcast(flat, src, group=group)
        for tensor, synced in zip(same_dtype, _unflatten_dense_tensors(flat, same_dtype)):
            tensor.copy_(synced)
