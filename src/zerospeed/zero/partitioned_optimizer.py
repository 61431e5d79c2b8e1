"""The optimizer side of ZeRO stages 0-2: master weights, unscale/clip, step, gather.

Per bucket the optimizer owns a *master* range: the whole bucket at stage 0, this rank's
partition at stages 1 and 2. In fp32 without offload the master is a view of the model's
own storage (no copy: 4 bytes/param less than DeepSpeed's stage 1/2 keep). With bf16,
fp16 or offload the master is an fp32 copy on its tier. The torch optimizer sees one
1-D piece per parameter (the part of the parameter inside the master range), so
per-tensor optimizers such as LAMB keep per-parameter semantics at stage 0 and
optimizer state exists only for this rank's elements at stages 1 and 2.

Where masters and states live between steps is the tier's business (`zero.offload`): the
step asks it to swap each chunk of masters in before stepping it and out after; in
memory (offload none/cpu) that is one chunk and no swapping, on NVMe one file per chunk.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from zerospeed import comm
from zerospeed.runtime.precision import LossScaler
from zerospeed.zero.flat import FlatBucket
from zerospeed.zero.grad_reducer import GradReducer
from zerospeed.zero.offload.tier import NVMeSettings, ResidentTier


@dataclass(frozen=True)
class OffloadPolicy:
    """Where the master weights and optimizer states live (offload_optimizer)."""

    device: str = "none"  # "none" | "cpu" | "nvme"
    pin_memory: bool = False
    nvme: NVMeSettings | None = None  # paths, buffers, pipelining and aio when something goes to NVMe


@dataclass(frozen=True)
class LogicalPiece:
    """Elements [start, end) of parameter `name` (flattened), as this rank's master holds them."""

    name: str
    shape: tuple[int, ...]
    start: int
    end: int
    tensor: torch.Tensor  # fp32 master elements; the inner optimizer's state is keyed by it
    grad: torch.Tensor | None = None  # the reduced (still loss-scaled) gradient of those elements


class MasterRange:
    """One bucket's master weights and the gradient the optimizer reads for them."""

    def __init__(
        self,
        bucket: FlatBucket,
        stage: int,
        offload: OffloadPolicy,
        accelerator,
        initial_fp32: torch.Tensor | None = None,
    ) -> None:
        """`initial_fp32`: the bucket's fp32 values before the model was cast to half
        precision, so master weights start exact rather than rounded to bf16/fp16."""
        self.bucket = bucket
        self.range = (0, bucket.layout.padded_numel) if stage == 0 else bucket.layout.partition_range(bucket.rank)
        working = bucket.data[self.range[0] : self.range[1]]
        self.offloaded = offload.device in ("cpu", "nvme")  # an fp32 master in host memory (NVMe: between swaps)
        self.shares_storage = bucket.dtype == torch.float32 and not self.offloaded
        if self.shares_storage:
            self.weights = working
        else:
            device = "cpu" if self.offloaded else working.device
            source = working if initial_fp32 is None else initial_fp32[self.range[0] : self.range[1]]
            self.weights = source.detach().to(device=device, dtype=torch.float32, copy=True)
            if offload.device == "cpu" and offload.pin_memory:
                self.weights = accelerator.pin_memory(self.weights)
        # The gradient the step reads: a host fp32 copy on the CPU tier; on NVMe the optimizer
        # adds one only where the reduced gradient is not already fp32 in host memory.
        self.grad = torch.zeros_like(self.weights) if offload.device == "cpu" else None
        self.pieces: list[torch.Tensor] = []
        for _, start, end in bucket.pieces(*self.range):
            self.pieces.append(self.weights[start - self.range[0] : end - self.range[0]])

    def bind_grads(self, reduced: torch.Tensor) -> None:
        """Point each piece's `.grad` at its slice of the gradient the step will read."""
        source = self.grad if self.grad is not None else reduced
        for piece, (_, start, end) in zip(self.pieces, self.bucket.pieces(*self.range)):
            piece.grad = source[start - self.range[0] : end - self.range[0]]

    def write_back(self) -> None:
        """Copy updated master weights into the model's working storage (cast if needed)."""
        if not self.shares_storage:
            self.bucket.data[self.range[0] : self.range[1]].copy_(self.weights, non_blocking=True)


class ZeroOptimizer:
    """What `initialize` returns as the optimizer: steps, loss scale, state, like DeepSpeed's wrapper."""

    def __init__(
        self,
        inner: torch.optim.Optimizer,
        masters: list[MasterRange],
        reducer: GradReducer,
        stage: int,
        loss_scaler: LossScaler,
        clip_norm: float,
        dp_group=None,
        model_parallel_group=None,
        tier=None,
    ) -> None:
        self.optimizer = inner
        self.dp_group = dp_group
        self.model_parallel_group = model_parallel_group
        self.masters = masters  # in the reducer's bucket order
        self.reducer = reducer
        self.stage = stage
        self.loss_scaler = loss_scaler
        self.clip_norm = clip_norm
        self.global_grad_norm: float | None = None
        # DeepSpeed's flag, read before the first step too (Accelerate's step_was_skipped):
        # whether the last boundary step found an overflow and was skipped
        self.overflow = False
        # Set by an async checkpoint whose copies of masters and states run in the background:
        # the step, the only writer of those tensors, waits for them first.
        self.update_barrier = None
        self.tier = tier if tier is not None else ResidentTier(masters)
        self.tier.attach(inner)
        self._master_index = {id(m): i for i, m in enumerate(self.masters)}
        for index, master in enumerate(self.masters):
            reduced = reducer.grad_view(index)
            if master.offloaded and master.grad is None and not _host_fp32(reduced):
                master.grad = torch.zeros(reduced.numel(), dtype=torch.float32)
            if not self.tier.chunked:  # chunked tiers bind each chunk's grads when it is resident
                master.bind_grads(reduced)

    # -- DeepSpeed-compatible surface -------------------------------------------------
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    @property
    def cur_scale(self) -> float:
        return self.loss_scaler.cur_scale

    @property
    def loss_scale(self) -> float:
        return self.loss_scaler.cur_scale

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.reducer.zero()

    def wait_for_readers(self) -> None:
        """Before masters or optimizer states change: let an async checkpoint finish copying them."""
        if self.update_barrier is not None:
            barrier, self.update_barrier = self.update_barrier, None
            barrier()

    def materialized(self, masters=None):
        """Context in which every fp32 master and optimizer state is in memory (a no-op unless
        offloaded to NVMe); what is changed inside is written back when it exits. Checkpoint
        code reading `logical_pieces()` and `state[piece.tensor]` runs inside it."""
        return self.tier.materialized(masters)

    # -- what the engine calls around backward ------------------------------------------
    def begin_backward(self, sync: bool) -> None:
        self.reducer.begin_backward(sync)

    def end_backward(self) -> None:
        self.reducer.end_backward()

    def abort_backward(self) -> None:
        """Backward raised: leave the reducer ready for the next attempt."""
        self.reducer.in_backward = False

    def __getattr__(self, name: str):
        # Only reached for names not found normally: forward to the torch optimizer.
        return getattr(self.__dict__["optimizer"], name)

    # -- the step -----------------------------------------------------------------------
    def _global_grad_sumsq(self) -> torch.Tensor:
        """Sum of squared reduced gradients over all ranks' partitions (inf/nan propagate)."""
        reduced = [self.reducer.grad_view(i) for i in range(len(self.masters))]
        if not reduced:
            return torch.zeros(())
        norms = torch._foreach_norm(reduced, 2.0)  # no full-size temporaries, unlike g.pow(2)
        local = torch.stack([n.float() for n in norms]).pow(2).sum()
        if self.stage >= 1 and comm.get_world_size(self.dp_group) > 1:
            comm.all_reduce(local, group=self.dp_group)  # partitions differ across data ranks
        if self.model_parallel_group is not None and comm.get_world_size(self.model_parallel_group) > 1:
            comm.all_reduce(local, group=self.model_parallel_group)  # other stages hold other params
        return local

    def step(self) -> bool:
        """Unscale, check overflow, clip, step, write back and gather. Returns False if skipped."""
        self.wait_for_readers()
        scale = self.loss_scaler.cur_scale
        sumsq = float(self._global_grad_sumsq())
        overflow = not math.isfinite(sumsq)
        self.overflow = overflow
        if overflow:
            self.global_grad_norm = None
            self.loss_scaler.update_scale(True)
            self.reducer.zero()
            return False
        norm = math.sqrt(sumsq) / scale
        self.global_grad_norm = norm
        coefficient = 1.0 / scale
        if self.clip_norm > 0:
            clip = self.clip_norm / (norm + 1e-6)
            if clip < 1.0:
                coefficient *= clip
        for index, master in enumerate(self.masters):
            reduced = self.reducer.grad_view(index)
            if master.grad is not None:
                master.grad.copy_(reduced, non_blocking=True)
            if coefficient != 1.0:
                (master.grad if master.grad is not None else reduced).mul_(coefficient)
        self._step_chunks()
        if self.stage >= 1 and comm.get_world_size(self.dp_group) > 1:
            self._gather_params()
        self.reducer.zero()
        self.loss_scaler.update_scale(False)
        return True

    def _step_chunks(self) -> None:
        """Step the inner optimizer chunk by chunk as the tier swaps masters in and out."""
        tier = self.tier
        for chunk in range(tier.num_chunks):
            masters = tier.swap_in(chunk)
            if tier.chunked:
                for master in masters:
                    master.bind_grads(self.reducer.grad_view(self._master_index[id(master)]))
                with _stepping_only(self.optimizer, [p for m in masters for p in m.pieces]):
                    self.optimizer.step()
            else:
                self.optimizer.step()
            for master in masters:
                master.write_back()
            tier.swap_out(chunk)
        tier.finish()

    def _gather_params(self) -> None:
        works = [
            comm.all_gather_into_tensor(
                m.bucket.data, m.bucket.local_partition(m.bucket.data), group=self.dp_group, async_op=True
            )
            for m in self.masters
        ]
        for work in works:
            work.wait()

    # -- checkpoint view ---------------------------------------------------------------------
    def logical_pieces(self) -> list[LogicalPiece]:
        """Every master piece this rank owns, named by parameter and element range.

        A checkpoint stores pieces under these logical coordinates, so it can be loaded
        into any world size or stage: a loader copies the overlap of saved and owned ranges.
        Offloaded to NVMe, call it inside `materialized()`.
        """
        self.tier.require_resident("logical_pieces()")
        found = []
        for master_index, master in enumerate(self.masters):
            layout = master.bucket.layout
            reduced = self.reducer.grad_view(master_index)
            for piece, (index, start, end) in zip(master.pieces, master.bucket.pieces(*master.range)):
                offset = layout.offsets[index]
                param = master.bucket.params[index]
                grad = reduced[start - master.range[0] : end - master.range[0]]
                found.append(
                    LogicalPiece(master.bucket.names[index], tuple(param.shape), start - offset, end - offset, piece, grad)
                )
        return found

    def refresh_master_from_working(self) -> None:
        """After the model's weights were overwritten (module-only load), copy them into masters."""
        with self.tier.materialized():
            for master in self.masters:
                if not master.shares_storage:
                    master.weights.copy_(master.bucket.data[master.range[0] : master.range[1]])

    def sync_working_from_master(self) -> None:
        """After master weights were overwritten (checkpoint load), update the model everywhere."""
        with self.tier.materialized():
            for master in self.masters:
                master.write_back()
        if self.stage >= 1 and comm.get_world_size(self.dp_group) > 1:
            self._gather_params()

    # -- accounting ------------------------------------------------------------------------
    def memory_report(self) -> dict[str, int]:
        """Bytes this rank holds for trainable params, grads, fp32 masters, optimizer states."""
        return {
            "params": sum(m.bucket.data.numel() * m.bucket.data.element_size() for m in self.masters),
            "grads": self.reducer.memory_bytes(),
            "master": self.master_bytes(),
            "optimizer_states": self.state_bytes(),
            "comm_buffers": self.reducer.staging_bytes(),
        }

    def state_bytes(self) -> int:
        total = 0
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total

    def master_bytes(self) -> int:
        return sum(m.weights.numel() * m.weights.element_size() for m in self.masters if not m.shares_storage)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "loss_scaler": self.loss_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_scaler.load_state_dict(state["loss_scaler"])


def _host_fp32(tensor: torch.Tensor) -> bool:
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu"


@contextlib.contextmanager
def _stepping_only(optimizer: torch.optim.Optimizer, pieces: list[torch.Tensor]):
    """Let `optimizer.step()` see only `pieces` (one swapped-in chunk); state stays keyed by tensor."""
    wanted = {id(p) for p in pieces}
    saved = [group["params"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) in wanted]
    try:
        yield
    finally:
        for group, params in zip(optimizer.param_groups, saved):
            group["params"] = params
