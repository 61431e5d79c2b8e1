"""Make every rank start from rank 0's weights, as DeepSpeed does at initialize()."""

from __future__ import annotations

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from zerospeed import comm


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Broadcast all parameters and buffers from `src`, one coalesced collective per dtype."""
    if comm.get_world_size() == 1:
        return
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    seen: set[int] = set()
    for tensor in tensors:
        if id(tensor) in seen or tensor.numel() == 0:
            continue
        seen.add(id(tensor))
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for dtype in sorted(by_dtype, key=str):
        group = by_dtype[dtype]
        flat = _flatten_dense_tensors(group)
        comm.broadcast(flat, src)
        for tensor, synced in zip(group, _unflatten_dense_tensors(flat, group)):
            tensor.copy_(synced)
