"""Make every rank start from rank 0's weights, as DeepSpeed does at initialize()."""

from __future__ import annotations

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from zerospeed import comm

# Tensors are broadcast in flat buckets of at most this many bytes (a larger tensor alone, in
# place), so the sync never holds a second copy of the whole model: one bucket at a time.
BUCKET_BYTES = 64 * 2**20


def broadcast_module_state(module: torch.nn.Module, group=None) -> None:
    """Broadcast all parameters and buffers from the group's first rank, one collective per bucket."""
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
        bucket: list[torch.Tensor] = []
        size = 0
        for tensor in by_dtype[dtype]:
            nbytes = tensor.numel() * tensor.element_size()
            if bucket and size + nbytes > BUCKET_BYTES:
                _broadcast_bucket(bucket, src, group)
                bucket, size = [], 0
            bucket.append(tensor)
            size += nbytes
        if bucket:
            _broadcast_bucket(bucket, src, group)


def _broadcast_bucket(bucket: list[torch.Tensor], src: int, group) -> None:
    if len(bucket) == 1 and bucket[0].is_contiguous():
        comm.broadcast(bucket[0], src, group=group)
        return
    flat = _flatten_dense_tensors(bucket)
    comm.broadcast(flat, src, group=group)
    for tensor, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
        tensor.copy_(synced)
