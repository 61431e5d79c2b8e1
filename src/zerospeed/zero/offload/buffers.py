"""A bounded pool of aligned host buffers, reused across swaps so swapping does not churn malloc."""

from __future__ import annotations

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
