"""The optimizer side of stage 3: fp32 masters of each unit's shard, stepped by ZeroOptimizer.

`UnitMaster` offers the same surface as stages 1-2's `MasterRange` (weights, pieces,
offloaded grad, `bind_grads`, `write_back`), so `Stage3Optimizer` inherits the whole
step (unscale, overflow check, global-norm clipping, loss-scale update) from
`ZeroOptimizer` and only replaces what differs: after a step the shards changed, so
units still gathered (persistent ones) are re-gathered instead of all-gathering buckets.
"""

from __future__ import annotations

import torch

from zerospeed import comm
from zerospeed.zero.offload.tier import ResidentParamTier
from zerospeed.zero.partitioned_optimizer import LogicalPiece, OffloadPolicy, ZeroOptimizer
from zerospeed.zero.stage3.coordinator import Stage3Coordinator
from zerospeed.zero.stage3.grads import UnitGradReducer
from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus


class UnitMaster:
    """One unit's fp32 master (this rank's shard) and one optimizer piece per trainable member."""

    def __init__(self, unit: ParamUnit, trainable: list[int], offload: OffloadPolicy, accelerator,
                 initial_fp32: torch.Tensor | None = None, param_offloaded: bool = False, param_tier=None) -> None:
        self.unit = unit
        self.param_tier = param_tier if param_tier is not None else ResidentParamTier()
        self.offloaded = offload.device in ("cpu", "nvme")
        # The shard itself is the master when it already is fp32 on the optimizer's tier (and
        # neither is swapped to NVMe: they travel separately there).
        self.shares_storage = (unit.shard.dtype == torch.float32 and self.offloaded == param_offloaded
                               and offload.device != "nvme" and self.param_tier.resident)
        if self.shares_storage:
            self.weights = unit.shard
        else:
            device = "cpu" if self.offloaded else unit.compute_device
            source = unit.shard if initial_fp32 is None else initial_fp32
            self.weights = source.detach().to(device=device, dtype=torch.float32, copy=True)
            if offload.device == "cpu" and offload.pin_memory:
                self.weights = accelerator.pin_memory(self.weights)
        self.grad = torch.zeros_like(self.weights) if offload.device == "cpu" else None
        self.members: list[int] = []  # member index of each piece
        self.pieces: list[torch.Tensor] = []
        for index in trainable:
            start, end = unit.layout.logical_range(index, unit.rank)
            if end > start:
                offset = unit.layout.offsets[index]
                self.members.append(index)
                self.pieces.append(self.weights[offset : offset + end - start])
        unit.on_shard_written = self.refresh_from_shard

    def _ranges(self):
        for index in self.members:
            start, end = self.unit.layout.logical_range(index, self.unit.rank)
            offset = self.unit.layout.offsets[index]
            yield offset, offset + end - start

    def bind_grads(self, reduced: torch.Tensor) -> None:
        source = self.grad if self.grad is not None else reduced
        for piece, (start, end) in zip(self.pieces, self._ranges()):
            piece.grad = source[start:end]

    def write_back(self) -> None:
        if not self.shares_storage:
            self.param_tier.store(self.unit, self.weights)

    def refresh_from_shard(self) -> None:
        if not self.shares_storage:
            with self.param_tier.readable(self.unit):
                self.weights.copy_(self.unit.shard)


class Stage3Optimizer(ZeroOptimizer):
    """ZeroOptimizer over unit masters; the coordinator fetches and releases parameters."""

    def __init__(self, inner, masters: list[UnitMaster], reducer: UnitGradReducer, loss_scaler, clip_norm: float,
                 coordinator: Stage3Coordinator, units: list[ParamUnit], tier=None, param_tier=None) -> None:
        super().__init__(inner, masters, reducer, 3, loss_scaler, clip_norm, tier=tier)
        reducer.zero()  # binding the masters' grads grew the partitions; they hold no memory until backward
        self.coordinator = coordinator
        self.units = units
        self.param_tier = param_tier

    def begin_backward(self, sync: bool) -> None:
        self.reducer.begin_backward(sync)
        self.coordinator.begin_backward()

    def end_backward(self) -> None:
        self.reducer.end_backward()
        self.coordinator.end_backward()

    def abort_backward(self) -> None:
        self.reducer.in_backward = False
        self.coordinator.end_backward()

    def step(self) -> bool:
        applied = super().step()
        if applied and comm.get_world_size() == 1:  # ZeroOptimizer re-gathers only across ranks
            self._gather_params()
        return applied

    def _gather_params(self) -> None:
        self.coordinator.refresh_after_step()

    def logical_pieces(self) -> list[LogicalPiece]:
        self.tier.require_resident("logical_pieces()")
        found = []
        for master in self.masters:
            unit = master.unit
            for index, piece in zip(master.members, master.pieces):
                start, end = unit.layout.logical_range(index, unit.rank)
                found.append(LogicalPiece(unit.names[index], tuple(unit.params[index].ds_shape), start, end, piece))
        return found

    def refresh_master_from_working(self) -> None:
        with self.tier.materialized():
            for master in self.masters:
                master.refresh_from_shard()

    def sync_working_from_master(self) -> None:
        with self.tier.materialized():
            for master in self.masters:
                master.write_back()
        self._gather_params()

    def memory_report(self) -> dict[str, int]:
        params = 0
        for unit in self.units:
            params += unit.shard_bytes()
            if unit.status is not ZeroParamStatus.NOT_AVAILABLE:  # frozen members: the engine counts them
                params += sum(p.numel() * p.element_size() for p in unit.params if p.requires_grad)
        return {
            "params": params,
            "grads": self.reducer.memory_bytes(),
            "master": self.master_bytes(),
            "optimizer_states": self.state_bytes(),
        }
