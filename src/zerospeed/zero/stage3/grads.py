"""Stage-3 gradient reduction: each unit's gradients reduce-scatter into its fp32 partition.

A parameter's post-accumulate-grad hook adds its gradient into the unit's rank-major
staging buffer (`layout.scatter_in`) and drops `param.grad`. When every trainable member
of a unit has its gradient, the staging buffer is reduce-scattered asynchronously into
this rank's partition and the unit's full parameters are released (the coordinator's
`on_grads_reduced`). Units not complete when backward ends (unused parameters) are
flushed in unit order, so every rank issues the same collectives. A second gradient for
a unit already reduced (reentrant activation checkpointing uses a parameter inside and
outside the checkpointed segment) opens a new round that adds into the same partition:
reduce-scatter is linear, so the sum is the same.

The partition accumulates over micro-steps, as at stage 2; `ReducePlan` (shared with
stages 0-2) sets accumulation and wire dtypes and the pre/post division.

Partitions hold memory only between a unit's first reduction and the optimizer step, as
torch's `zero_grad(set_to_none=True)` gradients do: `zero()` frees each partition's storage
(resized to zero bytes, FSDP style, so the optimizer pieces' `.grad` views stay bound) and
the first reduction of the next backward re-grows it and reduce-scatters straight into it.
Forward therefore runs without 4 bytes/param/N of gradients alive, and backward's gradients
grow as its activations are freed. `grad_view()` re-grows a freed partition as zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from zerospeed import comm
from zerospeed.errors import EngineError
from zerospeed.zero.grad_reducer import ReducePlan
from zerospeed.zero.stage3.layout import scatter_in
from zerospeed.zero.stage3.params import ParamUnit

# Reductions overlap backward; past this many in flight the oldest is waited for, so the
# full-size staging buffers alive at once stay a few units' worth, not the whole model's.
MAX_REDUCTIONS_IN_FLIGHT = 3


@dataclass
class UnitGrads:
    unit: ParamUnit
    trainable: list[int]  # member indices whose gradients are reduced
    partition: torch.Tensor  # its storage is freed between steps (see `allocated`)
    staging: torch.Tensor | None = None
    allocated: bool = False  # the partition's storage holds this step's gradient (or zeros)
    ready: set[int] = field(default_factory=set)
    touched: bool = False  # a round is open (some gradient arrived and is not yet reduced)


class UnitGradReducer:
    """Owns gradient partitions and their collectives; the optimizer reads `grad_view()`."""

    def __init__(self, units: list[ParamUnit], trainable_ids: set[int], plan: ReducePlan,
                 on_reduced: Callable[[ParamUnit], None], ignored: list[torch.nn.Parameter] = ()) -> None:
        self.plan = plan
        self.on_reduced = on_reduced
        self.states: list[UnitGrads] = []
        self._where: dict[int, tuple[int, int]] = {}
        self._hooks = []
        for unit in units:
            trainable = [i for i, p in enumerate(unit.params) if id(p) in trainable_ids]
            partition = torch.empty(unit.layout.shard_numel, dtype=plan.accum_dtype, device=unit.compute_device)
            partition.untyped_storage().resize_(0)
            self.states.append(UnitGrads(unit, trainable, partition))
            for index in trainable:
                param = unit.params[index]
                self._where[id(param)] = (len(self.states) - 1, index)
                self._hooks.append(param.register_post_accumulate_grad_hook(self._on_grad))
        for param in ignored:  # trainable but not optimized: nothing to reduce, keep no full-size grad
            self._hooks.append(param.register_post_accumulate_grad_hook(_drop_grad))
        self._pending: list[tuple[UnitGrads, object, torch.Tensor]] = []
        self.in_backward = False

    # -- backward ---------------------------------------------------------------------------
    def begin_backward(self, sync: bool) -> None:
        """Stage 3 reduces every micro-step, whatever `sync` says (as stage 2)."""
        self.in_backward = True
        for state in self.states:
            state.ready.clear()
            state.touched = False

    def _on_grad(self, param: torch.nn.Parameter) -> None:
        state_index, index = self._where[id(param)]
        state = self.states[state_index]
        if not self.in_backward:
            raise EngineError(
                f"a gradient for {state.unit.describe(index)} was produced outside engine.backward(loss); "
                "call engine.backward(loss) instead of loss.backward()"
            )
        grad = param.grad.reshape(-1)
        param.grad = None
        if index in state.ready:  # second gradient after this round was reduced: a new round
            state.ready.clear()
        state.touched = True
        layout = state.unit.layout
        if state.staging is None and layout.single and layout.numels[0] == layout.gathered_numel \
                and grad.dtype == self.plan.accum_dtype and grad.is_contiguous():
            state.staging = grad  # autograd handed the gradient over: reduce it in place, no copy
        else:
            if state.staging is None:
                state.staging = torch.zeros(layout.gathered_numel, dtype=self.plan.accum_dtype, device=grad.device)
            scatter_in(state.staging, layout, index, grad)
        state.ready.add(index)
        if len(state.ready) == len(state.trainable):
            self._launch(state)
            self.on_reduced(state.unit)

    def _launch(self, state: UnitGrads) -> None:
        if state.staging is None:
            state.staging = torch.zeros(state.unit.layout.gathered_numel, dtype=self.plan.accum_dtype,
                                        device=state.partition.device)
        wire = state.staging if self.plan.comm_dtype == state.staging.dtype else state.staging.to(self.plan.comm_dtype)
        state.staging = None
        state.touched = False
        if self.plan.predivide != 1.0:
            wire.div_(self.plan.predivide)
        if not state.allocated and wire.dtype == state.partition.dtype and wire.device == state.partition.device:
            out = self._grow(state)  # first reduction this step: straight into the partition, no copy
        else:
            out = torch.empty(state.unit.layout.shard_numel, dtype=wire.dtype, device=wire.device)
        if self.plan.world_size == 1:
            out.copy_(wire)
            work = None
        else:
            work = comm.reduce_scatter_tensor(out, wire, group=state.unit.group, async_op=True)
        self._pending.append((state, work, out, wire))
        while len(self._pending) > MAX_REDUCTIONS_IN_FLIGHT:  # bound the staging memory backward holds
            self._finish(*self._pending.pop(0))

    def _finish(self, state: UnitGrads, work, out: torch.Tensor, wire: torch.Tensor) -> None:
        if work is not None:
            work.wait()
        if self.plan.postdivide != 1.0:
            out.div_(self.plan.postdivide)
        if out is state.partition:
            return
        if state.allocated:
            state.partition.add_(out)
        else:
            self._grow(state).copy_(out)

    @staticmethod
    def _grow(state: UnitGrads) -> torch.Tensor:
        """Give a freed partition its storage back (contents undefined until written)."""
        partition = state.partition
        partition.untyped_storage().resize_(partition.numel() * partition.element_size())
        state.allocated = True
        return partition

    def end_backward(self) -> None:
        """Flush units still open (in unit order), wait for every reduction, add into partitions."""
        self.in_backward = False
        for state in self.states:
            if state.trainable and (state.touched or len(state.ready) < len(state.trainable)) and not self._launched(state):
                self._launch(state)
        for pending in self._pending:
            self._finish(*pending)
        self._pending.clear()

    def _launched(self, state: UnitGrads) -> bool:
        """Complete this backward and nothing arrived since (no open round)."""
        return len(state.ready) == len(state.trainable) and not state.touched

    # -- what the optimizer reads -------------------------------------------------------------
    def grad_view(self, index: int) -> torch.Tensor:
        state = self.states[index]
        if not state.allocated:
            self._grow(state).zero_()
        return state.partition

    def zero(self) -> None:
        """Drop every gradient: partitions give their memory back until the next reduction."""
        for state in self.states:
            state.partition.untyped_storage().resize_(0)
            state.allocated = False
            state.staging = None

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def memory_bytes(self) -> int:
        total = 0
        for state in self.states:
            total += state.partition.untyped_storage().nbytes()
            if state.staging is not None:
                total += state.staging.numel() * state.staging.element_size()
        return total


def _drop_grad(param: torch.nn.Parameter) -> None:
    param.grad = None
