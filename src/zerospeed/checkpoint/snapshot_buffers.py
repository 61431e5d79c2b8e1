"""CPU staging buffers that async saves copy into, kept from one save to the next.

An async save's stall is the time to copy this rank's state to CPU. Into freshly allocated
memory that copy is dominated by page faults (measured here: 120 MB cloned in 0.35-0.77 s,
copied into an existing buffer in 0.015-0.034 s), so the buffers are reused: the second and
later async saves only copy. The cost is one CPU copy of this rank's checkpoint state held
between saves (torch DCP's cached staging makes the same trade); `release()` frees it.

Buffers are matched by (shape, dtype), not by order, so a changed set of tensors (a new
optimizer state key, a frozen parameter) only reallocates what changed. A pool must not be
refilled while a writer thread still reads it: `saver.save` waits for the pending save first.
On an accelerator the buffers are pinned and the copies non-blocking; `finish()` synchronizes.

A *deferred* snapshot only assigns buffers; the copies run later (`run_deferred`, in the async
writer's thread, while the training loop goes on) for the tensors that change only in the
optimizer step, which waits for them. Tensors staged with `now=True` (module buffers, which a
forward may change) are copied at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from zerospeed.accelerator import get_accelerator

_Key = tuple[tuple[int, ...], torch.dtype]

_active: "SnapshotBuffers | None" = None


class SnapshotBuffers:
    """A pool of CPU tensors, handed out by shape and dtype during one snapshot."""

    def __init__(self) -> None:
        self._buffers: dict[_Key, list[torch.Tensor]] = {}
        self._free: dict[_Key, list[torch.Tensor]] = {}
        self._used: dict[_Key, list[torch.Tensor]] = {}
        self._deferred: list[tuple[torch.Tensor, torch.Tensor]] = []  # (source, buffer) not copied yet
        self.deferring = False
        self.reused_bytes = 0
        self.allocated_bytes = 0

    @property
    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self._buffers.values() for t in ts)

    def begin(self, defer: bool = False) -> None:
        self._free = {key: list(ts) for key, ts in self._buffers.items()}
        self._used = {}
        self._deferred = []
        self.deferring = defer
        self.reused_bytes = self.allocated_bytes = 0

    def copy(self, tensor: torch.Tensor, now: bool = False) -> torch.Tensor:
        """A CPU copy of `tensor` in a pooled buffer (contiguous, same shape and dtype); when the
        snapshot defers and not `now`, the buffer is filled later by `run_deferred`."""
        tensor = tensor.detach()
        key = (tuple(tensor.shape), tensor.dtype)
        free = self._free.get(key)
        nbytes = tensor.numel() * tensor.element_size()
        if free:
            buffer = free.pop()
            self.reused_bytes += nbytes
        else:
            accelerator = get_accelerator()
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu")
            if tensor.device.type != "cpu":
                buffer = accelerator.pin_memory(buffer)
            self.allocated_bytes += nbytes
        if self.deferring and not now:
            self._deferred.append((tensor, buffer))
        else:
            buffer.copy_(tensor, non_blocking=tensor.device.type != "cpu")
        self._used.setdefault(key, []).append(buffer)
        return buffer

    def finish(self) -> None:
        """Wait for non-blocking copies; drop buffers this snapshot did not use."""
        self._synchronize()
        self._buffers = self._used
        self._free, self._used = {}, {}

    @property
    def deferred_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for _, b in self._deferred)

    def run_deferred(self) -> None:
        """Fill the buffers a deferred snapshot assigned (their sources must not have changed)."""
        pending, self._deferred = self._deferred, []
        for source, buffer in pending:
            buffer.copy_(source, non_blocking=source.device.type != "cpu")
        if pending:
            self._synchronize()

    def _synchronize(self) -> None:
        if get_accelerator().name != "cpu":
            get_accelerator().synchronize()

    def release(self) -> None:
        self._buffers, self._free, self._used = {}, {}, {}


def pool_of(engine) -> SnapshotBuffers:
    """The engine's pool (created on its first async save)."""
    pool = engine.__dict__.get("_snapshot_buffers")
    if pool is None:
        pool = engine.__dict__["_snapshot_buffers"] = SnapshotBuffers()
    return pool


@contextlib.contextmanager
def staging(pool: SnapshotBuffers | None, defer: bool = False) -> Iterator[SnapshotBuffers | None]:
    """Within the block, `stage()` copies into `pool` (None: plain clones); with `defer` the
    copies wait for `pool.run_deferred()`."""
    global _active
    previous, _active = _active, pool
    if pool is not None:
        pool.begin(defer)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.finish()
        _active = previous


def stage(tensor: torch.Tensor, now: bool = False) -> torch.Tensor:
    """A CPU copy of `tensor` that the caller owns until the next snapshot of the same pool
    (filled later if the snapshot defers, unless `now`: for tensors a forward may change)."""
    if _active is not None:
        return _active.copy(tensor, now)
    return tensor.detach().to("cpu", copy=True).contiguous()
