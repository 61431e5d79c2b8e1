"""NVMe tier for stage-3 parameter shards (offload_param.device "nvme").

A swapped unit (`SwappedParamUnit`) keeps its shard in a file; its shard and every member's
`ds_tensor` are empty between uses (DeepSpeed's layout for NVMe-offloaded parameters).
- fetch: the shard is read in (or found already read by a prefetch), all-gathered, and
  dropped again once the gather is done; nothing is written, it did not change.
- prefetch: when a unit is swapped in, reads start for the next units of the recorded
  fetch order (the coordinator's schedule), up to `buffer_count` units resident or in flight.
- after the optimizer step (`store`): the updated values are written; the buffer stays
  attached to the write, so the next fetch of that unit needs no read at all.
The first `max_in_cpu` elements of non-persistent units (in unit order) and every
persistent unit stay in CPU memory as plain units, as in DeepSpeed. A unit's shard must fit
in `buffer_size` elements.
"""

from __future__ import annotations

import contextlib
import weakref
import time
from collections import OrderedDict

import torch

from zerospeed.errors import ConfigError
from zerospeed.io import AsyncIO
from zerospeed.zero.offload.buffers import BufferPool, limit_heap_retention, return_free_memory
from zerospeed.zero.offload.swap_dir import close_files, open_swap_directory
from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus


def _point(tensor: torch.Tensor, buffer: torch.Tensor | None, offset: int = 0, numel: int = 0) -> None:
    if buffer is None:
        tensor.set_(torch.empty(0, dtype=tensor.dtype).untyped_storage(), 0, (0,), (1,))
    else:
        tensor.set_(buffer.untyped_storage(), buffer.storage_offset() + offset, (numel,), (1,))


class SwappedParamUnit(ParamUnit):
    """A ParamUnit whose shard lives in a swap file except while it is being gathered or updated."""

    def __init__(self, *args, tier: "NVMeParamTier", file, **kwargs) -> None:
        self.tier = tier
        self.file = file
        super().__init__(*args, **kwargs)
        self.shard_numel = self.shard.numel()
        self.sealed = False  # its initial shard is on disk

    def start_fetch(self) -> None:
        if self.status is ZeroParamStatus.NOT_AVAILABLE:
            self.tier.swap_in(self)
        super().start_fetch()

    def fetch(self) -> None:
        super().fetch()
        self.tier.release(self)  # gathered: the shard copy is not needed until the next fetch

    def write_full_to_shard(self) -> None:
        self.tier.swap_in(self)
        super().write_full_to_shard()
        self.tier.store(self, self.shard)
        self.tier.release(self)

    def attach(self, buffer: torch.Tensor | None) -> None:
        """Point the shard and each member's ds_tensor at `buffer` (None: at nothing)."""
        _point(self.shard, buffer, 0, self.shard_numel)
        for param, offset, chunk in zip(self.params, self.layout.offsets, self.layout.chunks):
            _point(param.ds_tensor, buffer, offset, chunk)


class NVMeParamTier:
    """Owns the swap files, buffers and reads/writes of every swapped stage-3 unit of one rank."""

    resident = False

    def __init__(self, settings, *, rank: int, expected_bytes: int, group=None) -> None:
        self.settings = settings
        self.directory = open_swap_directory(settings.param_path, expected_bytes,
                                             "zero_optimization.offload_param.nvme_path", rank, group)
        limit_heap_retention()
        self.io = AsyncIO(settings.io)
        self._cpu_budget = settings.max_in_cpu
        self._files: list = []  # closed when the tier is collected (engine destruction)
        weakref.finalize(self, close_files, self._files)
        self._pool = BufferPool(settings.param_buffer_count)
        self.units: list[SwappedParamUnit] = []
        self._resident: dict[SwappedParamUnit, torch.Tensor] = {}
        self._reads: dict[SwappedParamUnit, tuple] = {}
        self._writes: OrderedDict[SwappedParamUnit, tuple] = OrderedDict()
        self.read_wait_seconds = 0.0
        self.write_wait_seconds = 0.0

    # -- building ----------------------------------------------------------------------------
    def make_unit(self, params, names, label, shard, **kwargs) -> ParamUnit:
        numel = shard.numel()
        if kwargs.get("persistent") or numel <= self._cpu_budget:
            if not kwargs.get("persistent"):
                self._cpu_budget -= numel
            return ParamUnit(params, names, label, shard, **kwargs)
        if numel > self.settings.param_buffer_size:
            raise ConfigError(
                f"zero_optimization.offload_param.buffer_size={self.settings.param_buffer_size} elements is smaller "
                f"than the shard of module '{label}' ({numel} elements); raise buffer_size to at least {numel}")
        file = self.io.open(self.directory.file(f"param-unit{len(self.units)}.swp"))
        self._files.append(file)
        unit = SwappedParamUnit(params, names, label, shard, tier=self, file=file, **kwargs)
        self.units.append(unit)
        return unit

    def seal(self, units: list) -> None:
        """Those units' masters hold their initial values: write swapped shards out and free them
        (a unit is sealed once; call it per unit as masters are built to keep the peak low)."""
        pending = []
        for unit in units:
            if not isinstance(unit, SwappedParamUnit) or unit.sealed:
                continue
            unit.sealed = True
            pending.append(self.io.write(unit.shard.detach(), unit.file, 0))
            unit.attach(None)
            if len(pending) > self._pool.limit:
                pending.pop(0).wait()
        for request in pending:
            request.wait()
        if pending:
            return_free_memory()

    # -- fetch side ------------------------------------------------------------------------------
    def swap_in(self, unit: SwappedParamUnit) -> None:
        if unit in self._resident:
            return
        began = time.perf_counter()
        if unit in self._writes:  # just written: its buffer still holds the values
            request, buffer = self._writes.pop(unit)
            request.wait()
            self.write_wait_seconds += time.perf_counter() - began
        else:
            if unit not in self._reads:
                self._start_read(unit)
            request, buffer = self._reads.pop(unit)
            request.wait()
            self.read_wait_seconds += time.perf_counter() - began
        self._resident[unit] = buffer
        unit.attach(buffer)
        self._prefetch_after(unit)

    def release(self, unit: SwappedParamUnit) -> None:
        buffer = self._resident.pop(unit, None)
        if buffer is not None:
            unit.attach(None)
            self._pool.release(buffer)

    def _start_read(self, unit: SwappedParamUnit) -> None:
        buffer = self._pool.acquire(unit.shard_numel * unit.shard.element_size(), unit.shard.dtype, self._free_one)
        buffer = buffer[: unit.shard_numel]
        self._reads[unit] = (self.io.read(buffer, unit.file, 0), buffer)

    def _prefetch_after(self, unit: SwappedParamUnit) -> None:
        coordinator = unit.coordinator
        if coordinator is None:
            return
        budget = self._pool.limit - len(self._resident) - len(self._reads)
        for upcoming in coordinator.schedule.upcoming()[: self._pool.limit]:
            if budget <= 0:
                break
            if not isinstance(upcoming, SwappedParamUnit) or upcoming.tier is not self:
                continue
            if upcoming in self._resident or upcoming in self._reads or upcoming in self._writes:
                continue
            if upcoming.status is not ZeroParamStatus.NOT_AVAILABLE:
                continue
            self._start_read(upcoming)
            budget -= 1

    def _free_one(self) -> bool:
        if not self._writes:
            return False
        began = time.perf_counter()
        _, (request, buffer) = self._writes.popitem(last=False)
        request.wait()
        self.write_wait_seconds += time.perf_counter() - began
        self._pool.release(buffer)
        return True

    # -- update side ------------------------------------------------------------------------------
    def store(self, unit: ParamUnit, values: torch.Tensor) -> None:
        """The optimizer changed this rank's master: write the new shard values."""
        if not isinstance(unit, SwappedParamUnit):
            unit.shard.copy_(values, non_blocking=True)
            return
        if unit in self._reads:  # a prefetch of the old values: finish it and drop it
            request, buffer = self._reads.pop(unit)
            request.wait()
            self._pool.release(buffer)
        if unit in self._resident:
            buffer = self._resident[unit]
            if values is not unit.shard:
                unit.shard.copy_(values)
            self._wait_writing(unit)
            self.io.write(buffer, unit.file, 0).wait()
            return
        self._wait_writing(unit)
        buffer = self._pool.acquire(unit.shard_numel * unit.shard.element_size(), unit.shard.dtype, self._free_one)
        buffer = buffer[: unit.shard_numel]
        buffer.copy_(values)
        self._writes[unit] = (self.io.write(buffer, unit.file, 0), buffer)
        while len(self._writes) > self._pool.limit:
            self._free_one()

    def _wait_writing(self, unit: SwappedParamUnit) -> None:
        if unit in self._writes:
            request, buffer = self._writes.pop(unit)
            request.wait()
            self._pool.release(buffer)

    @contextlib.contextmanager
    def readable(self, unit: ParamUnit):
        """`unit.shard` holds its values inside the block (it is swapped in if need be)."""
        if not isinstance(unit, SwappedParamUnit) or unit in self._resident:
            yield
            return
        self.swap_in(unit)
        try:
            yield
        finally:
            self.release(unit)

    def finish(self) -> None:
        while self._free_one():
            pass

    def close(self) -> None:
        self.finish()
        for unit in self.units:
            unit.file.close()
        self.io.close()
        self.directory.close()
