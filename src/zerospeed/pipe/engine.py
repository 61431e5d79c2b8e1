"""`PipelineEngine`: runs a schedule's instructions on one stage; the Engine does the rest.

The Engine (runtime/engine.py) is built with the module's grid as `mpu`, so ZeRO stage 0/1
reduces gradients within this stage's data-parallel group and the gradient norm sums over
the stages. This class only executes `TrainSchedule` / `InferenceSchedule` instructions:
load, forward, backward, the transfers of pipe/p2p.py, the tied-gradient sum and the
step. Micro-batches are the config's `gradient_accumulation_steps`.

Gradient reduction: each backward pass accumulates into the ZeRO reducer's buffers
without communicating; `ReduceTiedGrads` sums the tied weights' accumulated gradients
over their holders, then `ReduceGrads` launches the data-parallel reduction of every
bucket at once (stage 0: all-reduce, stage 1: reduce-scatter).
"""

from __future__ import annotations

from typing import Callable

import torch

from zerospeed import comm
from zerospeed.errors import ConfigError
from zerospeed.pipe import schedule, tied
from zerospeed.pipe.module import PipelineModule
from zerospeed.pipe.p2p import P2P, PipelineError
from zerospeed.runtime.data import RepeatingLoader
from zerospeed.runtime.engine import Engine
from zerospeed.runtime.timers import BACKWARD, FORWARD
from zerospeed.utils.logging import warn_once

# DeepSpeed's pipeline timer names (deepspeed.runtime.pipe.engine), which scripts import
BATCH_INPUT_TIMER = "batch_input"
TRAIN_BATCH_TIMER = "train_batch"
PIPE_SEND_OUTPUT_TIMER = "pipe_send_output"
PIPE_SEND_GRAD_TIMER = "pipe_send_grad"
PIPE_RECV_INPUT_TIMER = "pipe_recv_input"
PIPE_RECV_GRAD_TIMER = "pipe_recv_grad"

_USE_TRAIN_BATCH = "Only train_batch() is accessible in pipeline mode: use engine.train_batch(data_iter) / engine.eval_batch(data_iter)"


class PipelineEngine(Engine):
    """Training and evaluation of a `PipelineModule` with the 1F1B schedule."""

    def __init__(self, model: PipelineModule, config, *args, has_bool_tensors: bool = False, **kwargs) -> None:
        if not isinstance(model, PipelineModule):
            raise ConfigError(f"PipelineEngine needs a PipelineModule, got {type(model).__name__}")
        stage = config.zero_optimization.stage
        if stage >= 2:  # checked before any collective, so every rank fails alike
            raise ConfigError(
                f"zero_optimization.stage={stage} cannot be used with pipeline parallelism (as in DeepSpeed); allowed: 0, 1"
            )
        kwargs["mpu"] = model.mpu()
        super().__init__(model, config, *args, **kwargs)
        self.grid = model.mpu()
        self.num_stages = self.grid.get_pipe_parallel_world_size()
        self.stage_id = self.grid.get_stage_id()
        self.prev_stage, self.next_stage = self.stage_id - 1, self.stage_id + 1
        self.micro_batch_size = self._micro_batch_size
        self.micro_batches = self._gradient_accumulation_steps
        self.has_bool_tensors = has_bool_tensors
        self._force_grad_boundary = False
        self.data_iterator = None
        self.batch_fn: Callable | None = None
        self.agg_train_loss: torch.Tensor | None = None
        self.outputs = None
        self._apply_pipeline_config(config)
        prev = self.grid.stage_to_global(self.prev_stage) if self.stage_id > 0 else None
        nxt = self.grid.stage_to_global(self.next_stage) if self.stage_id < self.num_stages - 1 else None
        self.p2p = {mode: P2P(prev, nxt, self.device, dynamic_shape=model.dynamic_shape) for mode in ("train", "eval")}
        if self.training_dataloader is not None:
            self.set_dataloader(self.training_dataloader)
        self._replicas = [p for p in model.parameters() if getattr(p, "ds_pipe_replicated", False) and p.requires_grad]
        if model.ties_span_stages:
            tied.count_replicas_once_in_norm(self.optimizer, self._replicas)

    def _apply_pipeline_config(self, config) -> None:
        pipeline = config.pipeline
        if pipeline.use_reentrant:
            warn_once(
                "pipeline.use_reentrant=true is not honoured: zerospeed checkpoints activations non-reentrantly "
                "(the same numbers, and layers whose inputs need no gradient still train)"
            )
        if pipeline.activation_checkpoint_interval > 0:
            self.module.activation_checkpoint_interval = pipeline.activation_checkpoint_interval
        if self.module.activation_checkpoint_interval > 0:
            from zerospeed import checkpointing

            checkpointing.configure(self.grid, deepspeed_config=config)

    # -- DeepSpeed's API ---------------------------------------------------------------------------
    def train_batch(self, data_iter=None) -> torch.Tensor:
        """Train on `gradient_accumulation_steps` micro-batches; the mean loss, on every stage."""
        if not torch.is_grad_enabled():
            raise PipelineError("train_batch() requires gradients enabled. Use eval_batch() instead.")
        if self.optimizer is None:
            raise PipelineError("train_batch() needs an optimizer: pass optimizer= or an 'optimizer' config section")
        if data_iter is not None:
            self.set_dataiterator(data_iter)
        self.module.train()
        self.tput_timer.start()
        self._mode, self._compute_loss, self._return_logits = "train", True, False
        self.total_loss = None
        comm.set_step(self.global_steps)
        self._run(schedule.TrainSchedule(self.micro_batches, self.num_stages, self.stage_id))
        with torch.no_grad():
            self.agg_train_loss = self._aggregate_loss(self.total_loss, self.micro_batches)
        return self.agg_train_loss

    def eval_batch(self, data_iter, return_logits: bool = False, compute_loss: bool = True, reduce_output: str | None = "avg",
                   bcast_loss: bool = True, num_micro_batches: int | None = None):
        """Forward `num_micro_batches` (default: gradient_accumulation_steps) micro-batches without gradients."""
        if reduce_output is not None and reduce_output.lower() != "avg":
            raise ConfigError(f"eval_batch(reduce_output={reduce_output!r}) is not supported; allowed: 'avg' or None")
        self.module.eval()
        micro_batches = self.micro_batches if num_micro_batches is None else num_micro_batches
        train_iterator = self.data_iterator
        self.set_dataiterator(data_iter)
        self._mode, self._compute_loss, self._return_logits = "eval", compute_loss, return_logits
        self.outputs = None
        try:
            with torch.no_grad():
                self._run(schedule.InferenceSchedule(micro_batches, self.num_stages, self.stage_id))
                result = None
                if self.is_last_stage():
                    result = self._reduce_outputs(self.fwd_outputs, reduce_output, micro_batches)
                if compute_loss and bcast_loss and reduce_output is not None:
                    result = self._broadcast_from_last(result)
        finally:
            self.set_dataiterator(train_iterator)
        if return_logits:
            outputs, self.outputs = self.outputs, None
            return result, outputs
        return result

    def forward(self, *args, **kwargs):
        raise PipelineError(_USE_TRAIN_BATCH)

    def backward(self, *args, **kwargs):
        raise PipelineError(_USE_TRAIN_BATCH)

    def step(self, *args, **kwargs):
        raise PipelineError(_USE_TRAIN_BATCH)

    def is_first_stage(self) -> bool:
        return self.stage_id == 0

    def is_last_stage(self) -> bool:
        return self.stage_id == self.num_stages - 1

    def get_pipeline_parallel_rank(self) -> int:
        return self.stage_id

    def is_gradient_accumulation_boundary(self) -> bool:
        return self._force_grad_boundary

    def set_dataloader(self, loader) -> None:
        if self.is_first_stage() or self.is_last_stage():
            self.training_dataloader = loader
            self.data_iterator = iter(RepeatingLoader(loader))

    def set_dataiterator(self, iterator) -> None:
        if self.is_first_stage() or self.is_last_stage():
            self.data_iterator = iterator

    def set_batch_fn(self, fn: Callable) -> None:
        self.batch_fn = fn

    def set_train_batch_size(self, train_batch_size: int) -> None:
        super().set_train_batch_size(train_batch_size)
        self.micro_batches = self._gradient_accumulation_steps

    def reset_activation_shape(self) -> None:
        """Renegotiate activation shapes at the next transfer (e.g. a new sequence length)."""
        for channel in self.p2p.values():
            channel.reset()

    # -- the schedule ----------------------------------------------------------------------------------
    def _run(self, pipe_schedule: schedule.PipeSchedule) -> None:
        buffers = pipe_schedule.num_pipe_buffers()
        self.pipe_buffers = {key: [None] * buffers for key in ("inputs", "labels", "outputs")}
        self.fwd_outputs: list = []
        channel = self.p2p[self._mode]
        try:
            for step_cmds in pipe_schedule.steps():
                for cmd in step_cmds:
                    self._INSTRUCTION_MAP[type(cmd)](self, **cmd.kwargs)
        finally:
            channel.wait_all()
        self.pipe_buffers = None

    def _next_batch(self):
        if self.data_iterator is None:
            raise PipelineError(
                f"stage {self.stage_id} has no data: pass train_batch(data_iter) / eval_batch(data_iter) or "
                "initialize(training_data=...)"
            )
        batch = next(self.data_iterator)
        return self.batch_fn(batch) if self.batch_fn else batch

    def _exec_load_micro_batch(self, buffer_id: int, micro_batch: int | None = None) -> None:
        batch = self._next_batch()
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise PipelineError(f"a pipeline batch must be (inputs, labels), got {type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
        if self.is_first_stage():
            inputs = _to_device(batch[0], self.device)
            if self.policy.mixed:
                inputs = _cast(inputs, self.policy.param_dtype)
            self.pipe_buffers["inputs"][buffer_id] = inputs
        if self.is_last_stage():
            self.pipe_buffers["labels"][buffer_id] = _to_device(batch[1], self.device)

    def _exec_forward_pass(self, buffer_id: int, micro_batch: int | None = None) -> None:
        self.timers.start(FORWARD)
        outputs = self.module(self.pipe_buffers["inputs"][buffer_id])
        self.pipe_buffers["outputs"][buffer_id] = outputs
        if self.is_last_stage():
            if self._compute_loss and self.module.loss_fn is not None:
                loss = self.module.loss_fn(outputs, self.pipe_buffers["labels"][buffer_id])
            elif self._compute_loss and not _is_scalar(outputs):
                raise PipelineError(
                    f"the last stage produced {_shape_of(outputs)}, not a loss, and PipelineModule has no loss_fn; "
                    "pass PipelineModule(loss_fn=...) (called as loss_fn(outputs, labels))"
                )
            else:
                loss = outputs
            if self._return_logits:
                self.outputs = outputs
            self.pipe_buffers["outputs"][buffer_id] = loss
            self.fwd_outputs.append(_detach(loss))
            if self._mode == "train":
                self._observer.record_loss(loss)
                value = loss.detach().float()
                self.total_loss = value.clone() if self.total_loss is None else self.total_loss + value
        self.timers.stop(FORWARD)

    def _exec_send_activations(self, buffer_id: int, micro_batch: int | None = None) -> None:
        self.p2p[self._mode].send_activation(self.pipe_buffers["outputs"][buffer_id])
        if self._mode != "train":
            self.pipe_buffers["outputs"][buffer_id] = None

    def _exec_recv_activations(self, buffer_id: int, micro_batch: int | None = None) -> None:
        self.pipe_buffers["inputs"][buffer_id] = self.p2p[self._mode].recv_activation()

    def _exec_recv_grads(self, buffer_id: int, micro_batch: int | None = None) -> None:
        outputs = _needing_grad(self.pipe_buffers["outputs"][buffer_id])
        self.pipe_buffers.setdefault("grads", {})[buffer_id] = self.p2p["train"].recv_grads(outputs)

    def _exec_backward_pass(self, buffer_id: int, micro_batch: int | None = None) -> None:
        self.timers.start(BACKWARD)
        outputs = self.pipe_buffers["outputs"][buffer_id]
        if self.is_last_stage():
            loss = outputs
            if not _is_scalar(loss):
                raise PipelineError(f"backward needs a scalar loss on the last stage, got {_shape_of(loss)}")
            if self._gradient_accumulation_steps > 1:
                loss = loss / self._gradient_accumulation_steps
            if self.loss_scaler.cur_scale != 1.0:
                loss = loss * self.loss_scaler.cur_scale
            tensors, grads = [loss], None
        else:
            tensors, grads = _needing_grad(outputs), self.pipe_buffers["grads"].pop(buffer_id)
        self.optimizer.begin_backward(sync=False)  # accumulate only; ReduceGrads communicates
        try:
            if tensors:
                torch.autograd.backward(tensors, grad_tensors=grads)
        except BaseException:
            self.optimizer.abort_backward()
            raise
        self.optimizer.end_backward()
        self.pipe_buffers["outputs"][buffer_id] = None
        self.timers.stop(BACKWARD)

    def _exec_send_grads(self, buffer_id: int, micro_batch: int | None = None) -> None:
        inputs = _needing_grad(self.pipe_buffers["inputs"][buffer_id])
        self.p2p["train"].send_grads([t.grad if t.grad is not None else torch.zeros_like(t) for t in inputs])
        self.pipe_buffers["inputs"][buffer_id] = None

    def _exec_reduce_tied_grads(self) -> None:
        tied.reduce_tied_grads(self.optimizer, self.module.get_tied_weights_and_groups())

    def _exec_reduce_grads(self) -> None:
        self.optimizer.begin_backward(sync=True)  # no gradients arrive: launch every bucket's reduction
        self.optimizer.end_backward()

    def _exec_optimizer_step(self) -> None:
        self._force_grad_boundary = True
        self.micro_steps += self.micro_batches - 1  # Engine.step counts the last one
        try:
            Engine.step(self)
        finally:
            self._force_grad_boundary = False

    _INSTRUCTION_MAP = {
        schedule.OptimizerStep: _exec_optimizer_step,
        schedule.ReduceGrads: _exec_reduce_grads,
        schedule.ReduceTiedGrads: _exec_reduce_tied_grads,
        schedule.LoadMicroBatch: _exec_load_micro_batch,
        schedule.ForwardPass: _exec_forward_pass,
        schedule.BackwardPass: _exec_backward_pass,
        schedule.SendActivation: _exec_send_activations,
        schedule.RecvActivation: _exec_recv_activations,
        schedule.SendGrad: _exec_send_grads,
        schedule.RecvGrad: _exec_recv_grads,
    }

    # -- losses ---------------------------------------------------------------------------------------
    def _aggregate_loss(self, total: torch.Tensor | None, micro_batches: int) -> torch.Tensor:
        """Mean over micro-batches and data-parallel ranks, broadcast from the last stage."""
        loss = None
        if self.is_last_stage():
            loss = (total / micro_batches).float().reshape(())
            if self.dp_world_size > 1:
                comm.all_reduce(loss, group=self.dp_group)
                loss /= self.dp_world_size
        return self._broadcast_from_last(loss)

    def _reduce_outputs(self, outputs: list, reduce: str | None, micro_batches: int):
        if reduce is None:
            return outputs
        if isinstance(outputs[0], torch.Tensor):
            reduced = sum(outputs) / micro_batches
            if self.dp_world_size > 1:
                comm.all_reduce(reduced, group=self.dp_group)
                reduced /= self.dp_world_size
            return reduced
        reduced = [sum(parts) / micro_batches for parts in zip(*outputs)]
        if self.dp_world_size > 1:
            for value in reduced:
                comm.all_reduce(value, group=self.dp_group)
                value /= self.dp_world_size
        return reduced

    def _broadcast_from_last(self, value: torch.Tensor | None) -> torch.Tensor:
        if self.num_stages == 1:
            return value
        src = self.grid.stage_to_global(self.num_stages - 1)
        if self.is_last_stage():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise PipelineError(f"eval_batch(compute_loss=True) needs a scalar loss on the last stage, got {_shape_of(value)}")
            result = value.detach().float().reshape(()).clone()
        else:
            result = torch.zeros((), dtype=torch.float32, device=self.device)
        comm.broadcast(result, src, group=self.grid.get_pipe_parallel_group())
        return result


# -- helpers -----------------------------------------------------------------------------------------------
def _needing_grad(value) -> list[torch.Tensor]:
    tensors = [value] if isinstance(value, torch.Tensor) else list(value or ())
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return tuple(_to_device(v, device) for v in value)
    return value


def _cast(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype == torch.float32 else value
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return [_detach(v) for v in value]
    return value


def _is_scalar(value) -> bool:
    return isinstance(value, torch.Tensor) and value.numel() == 1


def _shape_of(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__
