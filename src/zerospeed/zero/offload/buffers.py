"""A bounded pool of aligned host buffers, reused across swaps so swapping does not churn malloc."""

from __future__ import annotations

import os
from typing import Callable

import torch

from zerospeed.io import aligned_empty, round_up


class BufferPool:
    """At most `limit` buffers kept; `acquire` asks `make_room` (e.g. finish a write) before growing
    past it, and grows anyway when nothing can be freed (release then drops the extra one)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.free: list[torch.Tensor] = []  # uint8, aligned
        self.live = 0

    def acquire(self, nbytes: int, dtype: torch.dtype, make_room: Callable[[], bool] = lambda: False) -> torch.Tensor:
        """An aligned buffer of at least `nbytes`, viewed as `dtype` (contents undefined)."""
        while not self.free and self.live >= self.limit and make_room():
            pass
        fitting = [i for i, b in enumerate(self.free) if b.numel() >= nbytes]
        if fitting:
            buffer = self.free.pop(min(fitting, key=lambda i: self.free[i].numel()))
        else:
            if self.free:  # none fits: drop one so the count stays bounded
                self.free.pop()
                self.live -= 1
            buffer = aligned_empty(round_up(max(nbytes, 1)), torch.uint8)
            self.live += 1
        return buffer.view(dtype)

    def release(self, buffer: torch.Tensor) -> None:
        if self.live > self.limit:
            self.live -= 1  # an extra one made under pressure: let it go
        else:
            self.free.append(buffer.view(torch.uint8))


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
_heap_limited = False


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def limit_heap_retention(threshold: int = 1 << 20) -> None:
    """Serve allocations of `threshold` bytes and more from mmap, returned to the system on free.

    Why: glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, and
    serves later blocks below it from a heap that keeps freed memory. Offload moves tens of
    MiB per unit in and out; with the dynamic threshold a 134M-parameter stage-3 run kept
    1.9 GB resident instead of 1.1 GB. Fixing the threshold (as MALLOC_MMAP_THRESHOLD_ does)
    keeps the process at what it really holds. Set once per process, by the NVMe tiers only.
    """
    global _heap_limited
    if _heap_limited or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    _heap_limited = True


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc `malloc_trim`) once partitions moved
    to disk at initialisation (what was freed before `limit_heap_retention` took effect)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
