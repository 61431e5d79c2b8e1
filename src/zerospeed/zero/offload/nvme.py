"""NVMe tier for optimizer partitions: fp32 masters and their optimizer states, swapped per chunk.

Masters (one per bucket partition at stages 1-2, per unit shard at stage 3) are grouped in
order into chunks of at most `sub_group_size` elements (DeepSpeed's key; a master is never
split). A chunk is one swap file laid out as

    [ weights of every master | state key 0 of every master | state key 1 ... ]

each master's region starting on a 4 KiB boundary, so one read brings a chunk in and one
write sends it back. While a chunk is resident, its tensors (each master's `weights`, the
optimizer pieces that are views of it, and the optimizer's elementwise fp32 states such as
`exp_avg`) point into one aligned buffer; swapped out, they are re-pointed (`Tensor.set_`)
at an empty storage, keeping their identity, which is what `optimizer.state` and
`param_groups` key on. State tensors the optimizer creates on its first step, or a
checkpoint load puts in `optimizer.state`, are adopted at the next swap-out by copying them
into the buffer. Scalar states (`step`) stay in memory.

Pipelining: with `pipeline_read`, swapping chunk k in starts reading chunk k+1; with
`pipeline_write`, swapping chunk k out returns before its write is done. `buffer_count`
bounds the buffers alive (a read waits for the oldest write to free one).
"""

from __future__ import annotations

import contextlib
import weakref
import os
import time
from collections import deque

import torch

from zerospeed.errors import EngineError
from zerospeed.io import ALIGNMENT, AsyncIO, round_up
from zerospeed.zero.offload.buffers import BufferPool, limit_heap_retention, return_free_memory
from zerospeed.zero.offload.swap_dir import close_files, open_swap_directory

STATES_ASSUMED = 2  # elementwise states per element the space check counts (Adam: exp_avg, exp_avg_sq)
REGION_ALIGN = ALIGNMENT // 4  # fp32 elements per 4 KiB
_EMPTY = torch.empty(0, dtype=torch.float32)


def _point(tensor: torch.Tensor, buffer: torch.Tensor | None, offset: int = 0, numel: int = 0) -> None:
    """Re-point `tensor` (keeping its identity) at `buffer[offset:offset+numel]`, or at nothing."""
    if buffer is None:
        tensor.set_(_EMPTY.untyped_storage(), 0, (0,), (1,))
    else:
        tensor.set_(buffer.untyped_storage(), buffer.storage_offset() + offset, (numel,), (1,))


def _elementwise(value, numel: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == numel \
        and value.dtype == torch.float32


class _Chunk:
    """Masters swapped together, their file, and where each tensor sits in the chunk buffer."""

    def __init__(self, index: int, file) -> None:
        self.index = index
        self.file = file
        self.masters: list = []
        self.weights_numel = 0  # with each master's region padded to 4 KiB
        self.element_count = 0  # real master elements (what sub_group_size bounds)
        self.slots: list[tuple[torch.Tensor, int, int]] = []  # masters' weights and pieces: (tensor, offset, numel)
        self.pieces: list[tuple[torch.Tensor, int, int]] = []
        self.keys: tuple[str, ...] = ()  # state keys on disk, in layout order
        self.states: dict[int, dict[str, torch.Tensor]] = {}  # id(piece) -> our state tensors
        self.buffer: torch.Tensor | None = None
        self.request = None
        self.attached = False

    @property
    def numel(self) -> int:
        return self.weights_numel * (1 + len(self.keys))

    def add_master(self, master) -> int:
        offset, weights = self.weights_numel, master.weights
        self.masters.append(master)
        self.element_count += weights.numel()
        self.slots.append((weights, offset, weights.numel()))
        for piece in master.pieces:
            where = offset + piece.storage_offset() - weights.storage_offset()
            self.slots.append((piece, where, piece.numel()))
            self.pieces.append((piece, where, piece.numel()))
        self.weights_numel += round_up(max(weights.numel(), 1), REGION_ALIGN)
        return offset

    def attach(self, optimizer) -> None:
        """Point masters, pieces and states at the resident buffer."""
        for tensor, offset, numel in self.slots:
            _point(tensor, self.buffer, offset, numel)
        for piece, offset, numel in self.pieces:
            mine = self.states.get(id(piece))
            if not mine:
                continue
            state = optimizer.state[piece]
            for index, key in enumerate(self.keys):
                if key in mine:
                    _point(mine[key], self.buffer, self.weights_numel * (1 + index) + offset, numel)
                    state[key] = mine[key]
        self.attached = True

    def detach(self) -> None:
        for tensor, _, _ in self.slots:
            tensor.grad = None
            _point(tensor, None)
        for mine in self.states.values():
            for tensor in mine.values():
                _point(tensor, None)
        self.attached = False


class NVMeOptimizerTier:
    """Masters and optimizer states in per-chunk swap files under this rank's swap directory."""

    def __init__(self, settings, *, rank: int, expected_numel: int, group=None) -> None:
        self.settings = settings
        needed = 4 * (1 + STATES_ASSUMED) * round_up(max(expected_numel, 1), REGION_ALIGN)
        self.directory = open_swap_directory(settings.optimizer_path, needed,
                                             "zero_optimization.offload_optimizer.nvme_path", rank, group)
        limit_heap_retention()
        self.io = AsyncIO(settings.io)
        self.chunks: list[_Chunk] = []
        self._files: list = []  # closed when the tier is collected (engine destruction)
        weakref.finalize(self, close_files, self._files)
        self.optimizer = None
        self._chunk_of: dict[int, _Chunk] = {}
        self._pool = BufferPool(settings.buffer_count)
        self._writes: deque[_Chunk] = deque()
        self._initial = deque()
        self.read_wait_seconds = 0.0
        self.write_wait_seconds = 0.0

    # -- building ----------------------------------------------------------------------------
    def bucket_numel_limit(self, world_size: int) -> int:
        """Stages 1-2 buckets no larger than a chunk's share of every rank (sub_group_size each)."""
        return max(1, self.settings.sub_group_size) * world_size

    def add(self, master) -> None:
        """Take `master` (fp32 on CPU): write its initial weights to its chunk and free its memory."""
        numel = master.weights.numel()
        chunk = self.chunks[-1] if self.chunks else None
        if chunk is None or chunk.element_count + numel > self.settings.sub_group_size:
            path = self.directory.file(f"optimizer-chunk{len(self.chunks)}.swp")
            chunk = _Chunk(len(self.chunks), self.io.open(path))
            self._files.append(chunk.file)
            self.chunks.append(chunk)
        offset = chunk.add_master(master)
        self._chunk_of[id(master)] = chunk
        self._initial.append(self.io.write(master.weights.detach().contiguous(), chunk.file, 4 * offset))
        for tensor, _, _ in chunk.slots[-1 - len(master.pieces):]:
            _point(tensor, None)
        while len(self._initial) > self._pool.limit:
            self._initial.popleft().wait()

    def attach(self, optimizer) -> None:
        self.optimizer = optimizer
        while self._initial:
            self._initial.popleft().wait()
        for chunk in self.chunks:  # padding between masters was never written: give it its bytes
            if os.fstat(chunk.file.fd).st_size < 4 * chunk.weights_numel:
                os.ftruncate(chunk.file.fd, 4 * chunk.weights_numel)
        return_free_memory()

    # -- the step ------------------------------------------------------------------------------
    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def chunked(self) -> bool:
        return True

    def swap_in(self, index: int) -> list:
        chunk = self.chunks[index]
        self._make_resident(chunk)
        if self.settings.pipeline_read and index + 1 < len(self.chunks):
            self._start_read(self.chunks[index + 1])
        return chunk.masters

    def swap_out(self, index: int) -> None:
        chunk = self.chunks[index]
        self._pack(chunk)
        chunk.request = self.io.write(chunk.buffer[: chunk.numel], chunk.file, 0)
        chunk.detach()
        self._writes.append(chunk)
        if not self.settings.pipeline_write:
            self._complete_write(chunk)

    def finish(self) -> None:
        """Wait for every write in flight; hand the step's freed heap pages back to the system."""
        while self._writes:
            self._complete_write(self._writes[0])
        return_free_memory()

    # -- outside the step -------------------------------------------------------------------------
    @contextlib.contextmanager
    def materialized(self, masters=None):
        """Swap in every chunk (or those holding `masters`); write them back when the block ends."""
        if masters is None:
            wanted = list(self.chunks)
        else:
            wanted = list({id(c): c for c in (self._chunk_of[id(m)] for m in masters)}.values())
        fresh = [c for c in wanted if not c.attached]
        for chunk in fresh:
            self._start_read(chunk, forced=True)
        for chunk in fresh:
            self._make_resident(chunk)
        try:
            yield
        finally:
            for chunk in fresh:
                self.swap_out(chunk.index)
            self.finish()

    def require_resident(self, what: str) -> None:
        if any(not c.attached for c in self.chunks):
            raise EngineError(f"{what}: fp32 masters and optimizer states are swapped out to NVMe "
                              f"({self.settings.optimizer_path}); read them inside `with optimizer.materialized():`")

    def close(self) -> None:
        self.finish()
        for chunk in self.chunks:
            chunk.file.close()
        self.io.close()
        self.directory.close()

    # -- internals ------------------------------------------------------------------------------
    def _start_read(self, chunk: _Chunk, forced: bool = False) -> None:
        if chunk.attached or chunk.buffer is not None:  # resident, reading, or its write still holds the data
            return
        chunk.buffer = self._pool.acquire(4 * chunk.numel, torch.float32, (lambda: False) if forced else self._free_one)
        chunk.request = self.io.read(chunk.buffer[: chunk.numel], chunk.file, 0)

    def _make_resident(self, chunk: _Chunk) -> None:
        if chunk.attached:
            return
        self._start_read(chunk)
        if chunk.request is not None:
            began = time.perf_counter()
            chunk.request.wait()
            if chunk.request.kind == "write":
                self._writes.remove(chunk)
                self.write_wait_seconds += time.perf_counter() - began
            else:
                self.read_wait_seconds += time.perf_counter() - began
            chunk.request = None
        chunk.attach(self.optimizer)

    def _free_one(self) -> bool:
        if not self._writes:
            return False
        self._complete_write(self._writes[0])
        return True

    def _complete_write(self, chunk: _Chunk) -> None:
        began = time.perf_counter()
        chunk.request.wait()
        self.write_wait_seconds += time.perf_counter() - began
        chunk.request = None
        self._writes.remove(chunk)
        self._pool.release(chunk.buffer)
        chunk.buffer = None

    def _pack(self, chunk: _Chunk) -> None:
        """Adopt states the optimizer created or replaced into the chunk buffer (layout may grow)."""
        state_of = self.optimizer.state if self.optimizer is not None else {}
        keys = set(chunk.keys)
        for piece, _, numel in chunk.pieces:
            for key, value in state_of.get(piece, {}).items():
                if _elementwise(value, numel):
                    keys.add(key)
        if keys != set(chunk.keys):
            self._relayout(chunk, tuple(list(chunk.keys) + sorted(keys - set(chunk.keys))))
        for piece, offset, numel in chunk.pieces:
            state = state_of.get(piece)
            if not state:
                continue
            mine = chunk.states.setdefault(id(piece), {})
            for index, key in enumerate(chunk.keys):
                value = state.get(key)
                if value is None or value is mine.get(key):
                    continue
                if not _elementwise(value, numel):
                    raise EngineError(f"optimizer state '{key}' changed shape or dtype ({tuple(value.shape)}, "
                                      f"{value.dtype}); NVMe offload keeps elementwise fp32 states")
                ours = mine.get(key)
                if ours is None:
                    ours = mine[key] = torch.empty(0, dtype=torch.float32)
                _point(ours, chunk.buffer, chunk.weights_numel * (1 + index) + offset, numel)
                ours.copy_(value)
                state[key] = ours

    def _relayout(self, chunk: _Chunk, keys: tuple[str, ...]) -> None:
        """New state keys appeared (first step): grow the buffer; existing regions keep their place."""
        needed = chunk.weights_numel * (1 + len(keys))
        if chunk.buffer.numel() < needed:
            bigger = self._pool.acquire(4 * needed, torch.float32)
            used = chunk.numel
            bigger[:used].copy_(chunk.buffer[:used])
            self._pool.release(chunk.buffer)
            chunk.buffer = bigger
        chunk.keys = keys
        chunk.attach(self.optimizer)
