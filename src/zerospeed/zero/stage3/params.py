"""Partitioned parameters and the unit that fetches and releases them together.

A `ParamUnit` owns one shard buffer holding this rank's chunk of each member parameter
(`param.ds_tensor` is a view into it). Its verbs are explicit, FSDP2 style:
`start_fetch()` issues the all-gather, `fetch()` completes it and points every
`param.data` at its full value, `release()` drops the full values again (`param.data`
becomes an empty tensor, DeepSpeed's layout) and frees the unit's full buffer by
resizing its storage to zero, FSDP style: a tensor autograd saved from a gathered weight
(a view such as `weight.t()`) shares that storage, and the re-fetch before the module's
backward refills it in place, so saved views are valid again when backward reads them.

Parameters carry DeepSpeed's attributes: `ds_shape`, `ds_numel`, `ds_tensor`, `ds_id`,
`ds_status`, `ds_persist`; `_zs_unit` points at the unit that owns them.
"""

from __future__ import annotations

import enum
import itertools
from typing import Callable

import torch

from zerospeed import comm
from zerospeed.errors import EngineError
from zerospeed.zero.stage3.layout import UnitLayout, copy_out, shard_of


class ZeroParamStatus(enum.Enum):
    """DeepSpeed's names for where a parameter's full value is."""

    AVAILABLE = 1  # param.data holds the full value
    NOT_AVAILABLE = 2  # only this rank's shard exists
    INFLIGHT = 3  # an all-gather is under way


_ids = itertools.count()


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_tensor")


def unit_of(param: torch.Tensor) -> "ParamUnit | None":
    return getattr(param, "_zs_unit", None)


def collect_shard(params: list[torch.Tensor], layout: UnitLayout, rank: int, dtype: torch.dtype,
                  device: torch.device | str) -> torch.Tensor:
    """This rank's shard of `params`, from their full data or their existing ds_tensor."""
    shard = torch.zeros(layout.shard_numel, dtype=dtype, device=device)
    for param, numel, chunk, offset in zip(params, layout.numels, layout.chunks, layout.offsets):
        if is_partitioned(param):
            if param.ds_tensor.numel() != chunk:
                raise EngineError(
                    f"parameter of shape {tuple(param.ds_shape)} was partitioned for another world size "
                    f"(shard of {param.ds_tensor.numel()} elements, expected {chunk} for {layout.world_size} ranks)"
                )
            source = param.ds_tensor
        else:
            source = shard_of(param.data.reshape(-1), numel, layout.world_size, rank)
        shard[offset : offset + chunk].copy_(source)
    return shard


def logical_numel(param: torch.Tensor) -> int:
    return param.ds_numel if is_partitioned(param) else param.numel()


def logical_shape(param: torch.Tensor) -> torch.Size:
    return param.ds_shape if is_partitioned(param) else param.shape


class ParamUnit:
    """Parameters gathered and released as one all-gather; owns their shard."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        names: list[str],
        label: str,
        shard: torch.Tensor,
        *,
        rank: int,
        world_size: int,
        compute_device: torch.device,
        persistent: bool = False,
        group=None,
    ) -> None:
        """`shard` is this rank's shard (from `collect_shard`) in the working dtype, on its tier."""
        self.params = params
        self.names = names
        self.label = label  # the owning module's name, for errors
        self.layout = UnitLayout.of([logical_numel(p) for p in params], world_size)
        self.shard = shard
        self.rank = rank
        self.world_size = world_size
        self.compute_device = torch.device(compute_device)
        self.persistent = persistent
        self.group = group
        self.status = ZeroParamStatus.NOT_AVAILABLE
        self.coordinator = None  # set when a stage-3 coordinator drives this unit
        self.holds = 0  # GatheredParameters contexts keeping it gathered
        self.on_shard_written: Callable[[], None] | None = None  # masters refresh from the shard
        self._pending = None
        self._full: torch.Tensor | None = None
        self.numel = self.layout.numel
        for index, param in enumerate(params):
            shape = logical_shape(param)
            param.ds_shape = torch.Size(shape)
            param.ds_numel = self.layout.numels[index]
            offset, chunk = self.layout.offsets[index], self.layout.chunks[index]
            param.ds_tensor = shard[offset : offset + chunk]
            if not hasattr(param, "ds_id"):
                param.ds_id = next(_ids)
            param.ds_persist = persistent
            param._zs_unit = self
        self._set_released()

    def describe(self, index: int | None = None) -> str:
        if index is None:
            return f"ZeRO-3 unit of module '{self.label}' ({', '.join(self.names)})"
        return f"parameter '{self.names[index]}' of module '{self.label}'"

    # -- the verbs ------------------------------------------------------------------------
    def start_fetch(self) -> None:
        """Issue the all-gather of every member's shard (asynchronous)."""
        if self.status is not ZeroParamStatus.NOT_AVAILABLE:
            return
        local = self.shard.to(self.compute_device, non_blocking=True)  # offload tier -> compute device
        full = self._allocate_full()
        gathered = full if self.layout.single else torch.empty(
            self.layout.gathered_numel, dtype=self.shard.dtype, device=self.compute_device)
        if self.world_size == 1:
            gathered.copy_(local)
            work = None
        else:
            work = comm.all_gather_into_tensor(gathered, local, group=self.group, async_op=True)
        self._pending = (work, gathered, local)
        self._set_status(ZeroParamStatus.INFLIGHT)

    def fetch(self) -> None:
        """Make every member's full value available (waits for a fetch already issued)."""
        if self.status is ZeroParamStatus.AVAILABLE:
            return
        self.start_fetch()
        work, gathered, _ = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        if self.layout.single:
            flats = [gathered[: self.layout.numels[0]]]
        else:
            flats = copy_out(gathered, self.layout, self._full)
        for param, flat, shape in zip(self.params, flats, self._shapes()):
            param.data = flat.view(shape)
        self._set_status(ZeroParamStatus.AVAILABLE)

    def release(self) -> None:
        """Drop the full values; only the shard stays. A fetch in flight is completed first."""
        if self.status is ZeroParamStatus.INFLIGHT:
            self.fetch()
        if self.status is ZeroParamStatus.AVAILABLE:
            self._set_released()

    def refresh(self) -> None:
        """Re-gather a unit that is available, after its shard changed (optimizer step)."""
        if self.status is not ZeroParamStatus.NOT_AVAILABLE:
            self._set_released()
            self.fetch()

    def write_full_to_shard(self) -> None:
        """After members' full values were modified in place: store this rank's chunk of each."""
        if self.status is not ZeroParamStatus.AVAILABLE:
            raise EngineError(f"{self.describe()} is not gathered; cannot store modified values")
        for index, param in enumerate(self.params):
            offset, chunk = self.layout.offsets[index], self.layout.chunks[index]
            chunk_values = shard_of(param.data.reshape(-1), self.layout.numels[index], self.world_size, self.rank)
            self.shard[offset : offset + chunk].copy_(chunk_values)
        if self.on_shard_written is not None:
            self.on_shard_written()

    # -- bookkeeping --------------------------------------------------------------------------
    def _shapes(self) -> list[torch.Size]:
        return [p.ds_shape for p in self.params]

    def _allocate_full(self) -> torch.Tensor:
        """The unit's full-value buffer; its storage is freed on release and re-grown on fetch."""
        numel = self.layout.gathered_numel if self.layout.single else self.layout.numel
        if self._full is None:
            self._full = torch.empty(numel, dtype=self.shard.dtype, device=self.compute_device)
        else:
            self._full.untyped_storage().resize_(numel * self._full.element_size())
        return self._full

    def _set_released(self) -> None:
        for param in self.params:
            param.data = torch.empty(0, dtype=self.shard.dtype, device=self.compute_device)
        if self._full is not None:
            # Free the memory even where autograd saved a view of a weight (`weight.t()` in
            # F.linear): the next fetch refills this same storage before that backward runs.
            self._full.untyped_storage().resize_(0)
        self._set_status(ZeroParamStatus.NOT_AVAILABLE)

    def _set_status(self, status: ZeroParamStatus) -> None:
        old, self.status = self.status, status
        for param in self.params:
            param.ds_status = status
        if self.coordinator is not None and old is not status:
            self.coordinator.on_status(self, old, status)

    def full_bytes(self) -> int:
        if self.status is ZeroParamStatus.NOT_AVAILABLE:
            return 0
        return self.layout.gathered_numel * self.shard.element_size()

    def shard_bytes(self) -> int:
        return self.shard.numel() * self.shard.element_size()
