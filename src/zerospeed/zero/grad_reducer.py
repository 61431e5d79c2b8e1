"""Gradient reduction from backward hooks into flat bucket buffers, for stages 0, 1 and 2.

Each parameter's post-accumulate-grad hook adds its gradient into its bucket's
accumulation buffer and drops `param.grad`. A bucket whose gradients are all in is
reduced asynchronously while backward goes on, so communication overlaps compute:

- stage 0: all-reduce the bucket (only on the accumulation boundary);
- stage 1: reduce-scatter the bucket into this rank's slice of it (boundary only);
- stage 2: reduce-scatter every micro-step into a persistent partition-sized buffer;
  the full-sized buffer is a transient staging area, freed once reduced.

Buckets are launched strictly in bucket order on every rank, so a parameter that is
unused on one rank (its hook never fires) delays later buckets until the end-of-backward
flush instead of reordering collectives across ranks, which would corrupt or hang them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zerospeed import comm
from zerospeed.errors import EngineError
from zerospeed.zero.flat import FlatBucket


# Collectives outstanding before the oldest is finished. Bounds stage 2's staging memory to
# a few buckets (finishing one frees its staging buffer for the next) while keeping overlap.
MAX_IN_FLIGHT = 2


class StagingPool:
    """Reusable staging buffers (stage 2): a free buffer at least as large is reused as a view.

    Reusing them avoids allocating and page-faulting a whole gradient's worth of fresh
    memory every backward; with `MAX_IN_FLIGHT` only a few exist at once when buckets
    complete in order (an unused parameter early in the order can hold more back).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self._free: list[torch.Tensor] = []
        self.allocated_numel = 0

    def acquire(self, numel: int) -> torch.Tensor:
        fitting = [i for i, b in enumerate(self._free) if b.numel() >= numel]
        if fitting:
            base = self._free.pop(min(fitting, key=lambda i: self._free[i].numel()))
            view = base[:numel]
            view.zero_()
            return view
        self.allocated_numel += numel
        return torch.zeros(numel, dtype=self.dtype, device=self.device)

    def release(self, buffer: torch.Tensor) -> None:
        self._free.append(buffer if buffer._base is None else buffer._base)

    def bytes(self) -> int:
        return self.allocated_numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class BucketGrads:
    """Gradient state of one bucket."""

    bucket: FlatBucket
    accum: torch.Tensor | None = None  # full-bucket accumulation (stage 0/1) or staging (stage 2)
    partition: torch.Tensor | None = None  # this rank's reduced gradient slice (stage 1/2)
    ready: set[int] = field(default_factory=set)  # param indices whose grad arrived this backward
    launched: bool = False
    has_partition_grad: bool = False  # stage 2: partition holds grads of this window


@dataclass(frozen=True)
class ReducePlan:
    stage: int
    world_size: int
    accum_dtype: torch.dtype
    comm_dtype: torch.dtype
    predivide: float  # divide before the collective (prescale_gradients / predivide factor)
    postdivide: float  # divide after it, so that the total is world_size
    group: object = None  # the data-parallel process group (None: the whole world)


class GradReducer:
    """Owns gradient buffers and their collectives; the optimizer reads `grad_view()`."""

    def __init__(self, buckets: list[FlatBucket], plan: ReducePlan) -> None:
        self.plan = plan
        self.states = [BucketGrads(b) for b in buckets]
        self._where: dict[int, tuple[int, int]] = {}
        for bucket_index, bucket in enumerate(buckets):
            for param_index, param in enumerate(bucket.params):
                self._where[id(param)] = (bucket_index, param_index)
        for state in self.states:
            self._allocate(state)
        self._staging = None
        if plan.stage >= 2 and buckets:
            self._staging = StagingPool(plan.accum_dtype, buckets[0].device)
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for b in buckets for p in b.params]
        self._next_launch = 0
        self._pending: list[tuple[BucketGrads, object, torch.Tensor]] = []
        self.sync = True
        self.in_backward = False

    def _allocate(self, state: BucketGrads) -> None:
        layout = state.bucket.layout
        device = state.bucket.device
        if self.plan.stage <= 1:
            state.accum = torch.zeros(layout.padded_numel, dtype=self.plan.accum_dtype, device=device)
            if self.plan.stage == 1:
                state.partition = state.bucket.local_partition(state.accum)
        else:
            state.partition = torch.zeros(layout.partition_numel, dtype=self.plan.accum_dtype, device=device)

    # -- backward ---------------------------------------------------------------------
    def begin_backward(self, sync: bool) -> None:
        """Called before each backward; `sync` says whether this one reduces (stage 0/1)."""
        self.sync = sync or self.plan.stage >= 2
        self.in_backward = True
        self._next_launch = 0
        for state in self.states:
            state.ready.clear()
            state.launched = False

    def _on_grad(self, param: torch.nn.Parameter) -> None:
        if not self.in_backward:
            raise EngineError(
                f"a gradient for {self._name(param)} was produced outside engine.backward(loss); "
                "call engine.backward(loss) instead of loss.backward()"
            )
        bucket_index, param_index = self._where[id(param)]
        state = self.states[bucket_index]
        if state.launched:
            raise EngineError(
                f"{self._name(param)} received a second gradient after its bucket was reduced in this backward "
                "(reentrant backward over the same parameter?)"
            )
        if state.accum is None:  # stage 2 staging, taken when the bucket's first grad lands
            state.accum = self._staging.acquire(state.bucket.layout.padded_numel)
        offset = state.bucket.layout.offsets[param_index]
        numel = state.bucket.layout.numels[param_index]
        state.accum[offset : offset + numel].add_(param.grad.reshape(-1))
        param.grad = None
        state.ready.add(param_index)
        if self.sync:
            self._launch_in_order(flush=False)

    def _name(self, param: torch.nn.Parameter) -> str:
        bucket_index, param_index = self._where[id(param)]
        return f"parameter '{self.states[bucket_index].bucket.names[param_index]}'"

    def _launch_in_order(self, flush: bool) -> None:
        while self._next_launch < len(self.states):
            state = self.states[self._next_launch]
            if not flush and len(state.ready) < len(state.bucket.params):
                return
            self._launch(state)
            self._next_launch += 1

    def _launch(self, state: BucketGrads) -> None:
        if state.accum is None:  # stage 2 bucket with no gradient on this rank: reduce zeros
            state.accum = self._staging.acquire(state.bucket.layout.padded_numel)
        wire = state.accum if self.plan.comm_dtype == state.accum.dtype else state.accum.to(self.plan.comm_dtype)
        if self.plan.predivide != 1.0:
            wire.div_(self.plan.predivide)
        if self.plan.stage == 0:
            work = comm.all_reduce(wire, group=self.plan.group, async_op=True)
        else:
            work = comm.reduce_scatter_tensor(state.bucket.local_partition(wire), wire, group=self.plan.group, async_op=True)
        state.launched = True
        self._pending.append((state, work, wire))
        while len(self._pending) > MAX_IN_FLIGHT:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        state, work, wire = self._pending.pop(0)
        work.wait()
        self._finish(state, wire)

    def end_backward(self) -> None:
        """Flush buckets not yet launched, wait for every collective, finish the reduction."""
        self.in_backward = False
        if not self.sync:
            return
        self._launch_in_order(flush=True)
        while self._pending:
            self._finish_oldest()

    def _finish(self, state: BucketGrads, wire: torch.Tensor) -> None:
        bucket = state.bucket
        if self.plan.stage == 0:
            if wire is not state.accum:
                state.accum.copy_(wire)
            if self.plan.postdivide != 1.0:
                state.accum.div_(self.plan.postdivide)
            return
        reduced = bucket.local_partition(wire)
        if self.plan.postdivide != 1.0:
            reduced.div_(self.plan.postdivide)
        if self.plan.stage == 1:
            if wire is not state.accum:
                state.partition.copy_(reduced)
            return
        if state.has_partition_grad:
            state.partition.add_(reduced)
        else:
            state.partition.copy_(reduced)
            state.has_partition_grad = True
        self._staging.release(state.accum)  # no rank keeps full gradients past their reduction
        state.accum = None

    # -- what the optimizer reads -------------------------------------------------------
    def grad_view(self, bucket_index: int) -> torch.Tensor:
        """The reduced gradient the optimizer steps on: full bucket (stage 0) or partition."""
        state = self.states[bucket_index]
        return state.accum if self.plan.stage == 0 else state.partition

    def zero(self) -> None:
        """Clear gradients after an optimizer step (or a skipped one)."""
        for state in self.states:
            if self.plan.stage <= 1:
                state.accum.zero_()
            else:
                state.partition.zero_()
                state.has_partition_grad = False
                if state.accum is not None:
                    self._staging.release(state.accum)
                    state.accum = None

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def memory_bytes(self) -> int:
        """Persistent gradient bytes: full buffers (stage 0/1) or the partition (stage 2)."""
        total = 0
        for state in self.states:
            tensor = state.accum if self.plan.stage <= 1 else state.partition
            total += tensor.numel() * tensor.element_size()
        return total

    def staging_bytes(self) -> int:
        """Stage 2's reusable staging buffers (a few buckets, not a whole gradient)."""
        return 0 if self._staging is None else self._staging.bytes()
