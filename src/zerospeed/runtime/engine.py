"""The training engine: the order of events of a training step, and nothing else.

`Engine` wraps the user's module and drives forward, backward, the accumulation
boundary and the optimizer step. Precision (runtime/precision.py), gradient reduction
and partitioning (zero/), optimizer and scheduler construction, data loading and timers
each live in their own module; the engine only calls them in order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from zerospeed import comm
from zerospeed.accelerator import get_accelerator
from zerospeed.errors import ConfigError, EngineError
from zerospeed.monitor.engine_events import StepObserver
from zerospeed.monitor.monitor import MonitorMaster
from zerospeed.profiling.engine_profiler import build_flops_profiler
from zerospeed.runtime.data import build_dataloader
from zerospeed.runtime.engine_compat import EngineCompat
from zerospeed.runtime.model_sync import broadcast_module_state
from zerospeed.runtime.param_groups import normalize_param_groups
from zerospeed.runtime.precision import precision_from_config
from zerospeed.runtime.timers import BACKWARD, FORWARD, STEP, ThroughputTimer, Timers
from zerospeed.utils import groups as compat_groups
from zerospeed.utils.logging import log_dist
from zerospeed.zero.builder import build_zero_optimizer
from zerospeed.zero.offload import NVMeSettings
from zerospeed.zero.partitioned_optimizer import OffloadPolicy

SUPPORTED_STAGES = (0, 1, 2, 3)
MEMORY_OPT_ALLREDUCE_SIZE = 500_000_000  # DeepSpeed's constant, imported by scripts from this module


class Engine(EngineCompat, torch.nn.Module):
    """DeepSpeed-compatible engine (`DeepSpeedEngine` is the same class); DeepSpeed's queries
    and utilities around the loop come from `EngineCompat` (runtime/engine_compat.py)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config,
        optimizer: torch.optim.Optimizer | Callable | None = None,
        model_parameters=None,
        lr_scheduler: Any = None,
        training_data=None,
        collate_fn: Callable | None = None,
        mpu=None,
    ) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"initialize(model=...) needs a torch.nn.Module, got {type(model).__name__}")
        self.module = model
        self._config = config
        comm.configure_logger(config.comms_logger)  # comms_logger section: what the comm log records and prints
        self.accelerator = get_accelerator()
        self.mpu = mpu
        compat_groups.mpu = mpu  # deepspeed.utils.groups answers with the last engine's layout
        # Data parallelism runs over mpu's data-parallel group when one is given (pipeline or
        # tensor parallel layouts); the gradient norm also sums over its model-parallel group.
        self.dp_group = mpu.get_data_parallel_group() if mpu is not None else None
        self.model_parallel_group = _model_parallel_group(mpu)
        self.world_size = comm.get_world_size()
        self.dp_world_size = comm.get_world_size(self.dp_group)
        self.global_rank = comm.get_rank()
        self.dp_rank = comm.get_rank(self.dp_group)
        self.local_rank = comm.get_local_rank()
        self.device = self.accelerator.device(self.local_rank if self.accelerator.name != "cpu" else None)
        self.policy, self.loss_scaler = precision_from_config(config)
        self._train_batch_size = config.train_batch_size
        self._micro_batch_size = config.train_micro_batch_size_per_gpu
        self._gradient_accumulation_steps = config.gradient_accumulation_steps
        self.global_steps = 0
        self.global_samples = 0
        self.micro_steps = 0
        self.skipped_steps = 0
        self._step_applied = False
        self._boundary_override: bool | None = None
        self._no_sync = False
        self._stage = config.zero_optimization.stage
        if self._stage not in SUPPORTED_STAGES:
            raise ConfigError(
                f"zero_optimization.stage={self._stage} is not available in this zerospeed version; "
                f"supported: {', '.join(map(str, SUPPORTED_STAGES))}"
            )

        model.to(self.device)
        broadcast_module_state(model, group=self.dp_group)
        self.optimizer = self._configure_optimizer(optimizer, model_parameters)
        _tag_managed_parameters(model, self.optimizer)
        model.to(self.policy.param_dtype)  # frozen params and buffers; trainable ones already are
        self.lr_scheduler = self._configure_scheduler(lr_scheduler)
        self.training_dataloader = None
        if training_data is not None:
            self.training_dataloader = build_dataloader(
                training_data, self._micro_batch_size, self.dp_world_size, self.dp_rank,
                collate_fn=collate_fn, drop_last=config.dataloader_drop_last,
            )
        self.timers = Timers(config.wall_clock_breakdown, self.accelerator.synchronize)
        self.tput_timer = ThroughputTimer(self._train_batch_size)
        self._known_params = {id(p) for p in model.parameters()}
        self.monitor = MonitorMaster(config)
        self.flops_profiler = build_flops_profiler(config, self)
        self._observer = StepObserver(self)  # monitor events, memory_breakdown, FLOP/s at each step

    # -- construction -------------------------------------------------------------------
    def _configure_optimizer(self, client_optimizer, model_parameters):
        if isinstance(client_optimizer, torch.optim.Optimizer):
            groups = normalize_param_groups(client_optimizer.param_groups, self.module)
        else:
            groups = normalize_param_groups(model_parameters, self.module)
        if client_optimizer is None and self._config.optimizer is None:
            return None
        if not any(g["params"] for g in groups):
            raise ConfigError("the optimizer has no trainable parameters (every parameter has requires_grad=False)")
        from zerospeed.runtime import optimizers

        zero = self._config.zero_optimization
        offload = zero.offload_optimizer
        offload_device = getattr(offload, "device", "none") if offload is not None else "none"
        if offload_device != "none" and self._stage == 0:
            raise ConfigError(f"zero_optimization.offload_optimizer (device {offload_device!r}) needs stage 1, 2 or 3, got stage 0")

        def make_inner(master_groups):
            if isinstance(client_optimizer, torch.optim.Optimizer):
                for group, master in zip(client_optimizer.param_groups, master_groups):
                    group["params"] = master["params"]
                client_optimizer.state.clear()
                inner = client_optimizer
            elif client_optimizer is not None:
                inner = client_optimizer(master_groups)
            else:
                inner = optimizers.build_optimizer(
                    self._config.optimizer, master_groups, cpu_offload=offload_device != "none"
                )
            if self._stage >= 1 and not optimizers.is_zero_supported_optimizer(inner) and not self._config.zero_allow_untested_optimizer:
                raise ConfigError(
                    f"optimizer {type(inner).__name__} is not tested with ZeRO stage {self._stage}; "
                    "set zero_allow_untested_optimizer: true to use it anyway"
                )
            return inner

        predivide = 1.0
        if self._config.prescale_gradients:
            predivide = float(self._config.gradient_predivide_factor)
        return build_zero_optimizer(
            self.module, groups, make_inner,
            stage=self._stage,
            reduce_bucket_size=zero.reduce_bucket_size,
            policy=self.policy,
            loss_scaler=self.loss_scaler,
            clip_norm=float(self._config.gradient_clipping or 0.0),
            offload=OffloadPolicy(offload_device, bool(getattr(offload, "pin_memory", False)),
                                  nvme=NVMeSettings.from_config(self._config)),
            world_size=self.dp_world_size,
            rank=self.dp_rank,
            predivide=predivide,
            accelerator=self.accelerator,
            dp_group=self.dp_group,
            model_parallel_group=self.model_parallel_group,
            zero_config=zero,
        )

    def _configure_scheduler(self, client_scheduler):
        if client_scheduler is not None:
            if callable(client_scheduler) and not hasattr(client_scheduler, "step"):
                if self.optimizer is None:
                    raise ConfigError("lr_scheduler given as a callable but there is no optimizer to pass it")
                return client_scheduler(self.optimizer.optimizer)
            return client_scheduler
        if self._config.scheduler is None or self.optimizer is None:
            return None
        from zerospeed.runtime.schedulers import build_scheduler

        return build_scheduler(self._config.scheduler, self.optimizer.optimizer)

    # -- forward / backward / step --------------------------------------------------------
    def forward(self, *inputs, **kwargs):
        self.timers.start(FORWARD)
        self.tput_timer.start()
        if self.policy.mixed:
            inputs, kwargs = _cast_floating((inputs, kwargs), self.policy.param_dtype)
        output = self.module(*inputs, **kwargs)
        self.timers.stop(FORWARD)
        return output

    def backward(self, loss: torch.Tensor, retain_graph: bool = False, scale_wrt_gas: bool = True) -> torch.Tensor:
        """Backward of `loss` with gradient reduction overlapped; returns the (gas-scaled) loss."""
        if self.optimizer is None:
            raise EngineError("engine.backward() needs an optimizer: pass optimizer= or an 'optimizer' config section")
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise EngineError(f"engine.backward(loss) needs a scalar tensor, got {_describe(loss)}")
        self._observer.record_loss(loss)
        self.timers.start(BACKWARD)
        if scale_wrt_gas and self._gradient_accumulation_steps > 1:
            loss = loss / self._gradient_accumulation_steps
        boundary = self.is_gradient_accumulation_boundary()
        self.optimizer.begin_backward(sync=boundary and not self._no_sync)
        scaled = loss * self.loss_scaler.cur_scale if self.loss_scaler.cur_scale != 1.0 else loss
        try:
            scaled.backward(retain_graph=retain_graph)
        except BaseException:
            self.optimizer.abort_backward()
            raise
        self.optimizer.end_backward()
        self.timers.stop(BACKWARD)
        return loss

    def step(self, lr_kwargs: dict | None = None) -> None:
        """Take the optimizer step at the accumulation boundary; count the micro-step always."""
        if self.optimizer is None:
            raise EngineError("engine.step() needs an optimizer: pass optimizer= or an 'optimizer' config section")
        self.timers.start(STEP)
        boundary = self.is_gradient_accumulation_boundary()
        self._step_applied = False
        if boundary:
            self._check_no_new_parameters()
            self._step_applied = self.optimizer.step()
            if not self._step_applied:
                self.skipped_steps += 1
                log_dist(f"step {self.global_steps}: gradients overflowed, step skipped, loss scale now {self.loss_scaler.cur_scale:g}")
            elif self.lr_scheduler is not None:
                self.lr_scheduler.step(**(lr_kwargs or {}))
            self.global_steps += 1
            self.global_samples += self._train_batch_size
        self.micro_steps += 1
        self.timers.stop(STEP)
        self.tput_timer.stop(boundary)
        self._observer.after_step(boundary)
        every = self._config.steps_per_print
        if boundary and every and self.global_steps % every == 0:
            self._report_progress()

    def _check_no_new_parameters(self) -> None:
        for name, param in self.module.named_parameters():
            if id(param) not in self._known_params:
                raise EngineError(
                    f"parameter '{name}' was added to the model after initialize(); ZeRO buffers are laid out "
                    "once: create every parameter before calling zerospeed.initialize()"
                )

    def _report_progress(self) -> None:
        lrs = ", ".join(f"{lr:.3e}" for lr in self.get_lr())
        log_dist(
            f"step={self.global_steps} skipped={self.skipped_steps} lr=[{lrs}] loss_scale={self.loss_scaler.cur_scale:g} "
            f"grad_norm={self.get_global_grad_norm()} samples/s={self.tput_timer.avg_samples_per_sec():.1f}"
        )
        if self.timers.enabled:
            summary = self.timers.summary([FORWARD, BACKWARD, STEP])
            text = " | ".join(f"{k}: {v['mean']:.1f}ms (min {v['min']:.1f}, max {v['max']:.1f})" for k, v in summary.items())
            log_dist(f"time per {self._config.steps_per_print} steps: {text}")
        if self._config.comms_logger.enabled:
            comm.log_summary()  # rank 0 prints the per-op, per-size table (no collective)

    # -- accumulation control --------------------------------------------------------------
    def is_gradient_accumulation_boundary(self) -> bool:
        if self._boundary_override is not None:
            return self._boundary_override
        return (self.micro_steps + 1) % self._gradient_accumulation_steps == 0

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self._boundary_override = bool(is_boundary)

    @contextlib.contextmanager
    def no_sync(self):
        """Skip gradient reduction inside the block (stages 0 and 1 only, as in DeepSpeed)."""
        if self._stage >= 2:
            raise EngineError(f"no_sync() cannot be used with ZeRO stage {self._stage}: stage 2 reduces every micro-step")
        previous, self._no_sync = self._no_sync, True
        try:
            yield
        finally:
            self._no_sync = previous

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad()

    # -- DeepSpeed accessors -------------------------------------------------------------
    def train_batch_size(self) -> int:
        return self._train_batch_size

    def train_micro_batch_size_per_gpu(self) -> int:
        return self._micro_batch_size

    def gradient_accumulation_steps(self) -> int:
        return self._gradient_accumulation_steps

    def set_train_batch_size(self, train_batch_size: int) -> None:
        per_step = self._micro_batch_size * self.dp_world_size
        if train_batch_size % per_step != 0:
            raise ConfigError(
                f"set_train_batch_size({train_batch_size}): must be a multiple of micro batch "
                f"{self._micro_batch_size} x data-parallel size {self.dp_world_size} = {per_step}"
            )
        self._train_batch_size = train_batch_size
        self._gradient_accumulation_steps = train_batch_size // per_step
        self.tput_timer.batch_size = train_batch_size

    def zero_optimization_stage(self) -> int:
        return self._stage

    def zero_optimization(self) -> bool:
        return self._stage > 0

    def fp16_enabled(self) -> bool:
        return self.policy.param_dtype == torch.float16

    def bf16_enabled(self) -> bool:
        return self.policy.param_dtype == torch.bfloat16

    def gradient_clipping(self) -> float:
        return float(self._config.gradient_clipping or 0.0)

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups] if self.optimizer else []

    def get_mom(self) -> list:
        if self.optimizer is None:
            return []
        return [g["betas"] if "betas" in g else g.get("momentum") for g in self.optimizer.param_groups]

    def get_global_grad_norm(self) -> float | None:
        return None if self.optimizer is None else self.optimizer.global_grad_norm

    def was_step_applied(self) -> bool:
        return self._step_applied

    def loss_scale(self) -> float:
        return self.loss_scaler.cur_scale

    @property
    def config(self) -> dict:
        return self._config.to_dict() if hasattr(self._config, "to_dict") else dict(self._config)

    def memory_report(self) -> dict[str, int]:
        """Bytes per rank of model states, counted from the buffers themselves."""
        frozen = sum(p.numel() * p.element_size() for p in self.module.parameters() if not p.requires_grad)
        report = {"params": 0, "grads": 0, "master": 0, "optimizer_states": 0}
        if self.optimizer is not None:
            report.update(self.optimizer.memory_report())
        report["params"] += frozen
        report["total"] = sum(report.values())
        return report

    # -- checkpoints: thin delegates to zerospeed.checkpoint (format, resharding, async) --------------
    def save_checkpoint(self, save_dir, tag=None, client_state={}, save_latest=True,  # noqa: B006 - DeepSpeed's signature
                        exclude_frozen_parameters=False, async_save=False) -> bool:
        from zerospeed.checkpoint import engine_io
        return engine_io.save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters, async_save)

    def load_checkpoint(self, load_dir, tag=None, load_module_strict=True, load_optimizer_states=True,
                        load_lr_scheduler_states=True, load_module_only=False, custom_load_fn=None):
        from zerospeed.checkpoint import engine_io
        return engine_io.load_checkpoint(self, load_dir, tag, load_module_strict, load_optimizer_states,
                                         load_lr_scheduler_states, load_module_only, custom_load_fn)

    def wait_for_checkpoint(self) -> None:
        from zerospeed.checkpoint import engine_io
        engine_io.wait_for_checkpoint(self)

    def module_state_dict(self, destination=None, prefix="", keep_vars=False, exclude_frozen_parameters=False):
        from zerospeed.checkpoint import engine_io
        return engine_io.module_state_dict(self, destination, prefix, keep_vars, exclude_frozen_parameters)

    def save_16bit_model(self, save_dir, save_filename="pytorch_model.bin", exclude_frozen_parameters=False) -> bool:
        from zerospeed.checkpoint import engine_io
        return engine_io.save_16bit_model(self, save_dir, save_filename, exclude_frozen_parameters)

    def save_fp16_model(self, save_dir, save_filename="pytorch_model.bin") -> bool:
        return self.save_16bit_model(save_dir, save_filename)


DeepSpeedEngine = Engine


def _tag_managed_parameters(module: torch.nn.Module, optimizer) -> None:
    """Let `zerospeed.utils.safe_get_full_*` find a parameter's optimizer and logical name."""
    if optimizer is None:
        return
    for name, param in module.named_parameters(remove_duplicate=False):  # last name wins, as in the builder
        param._zs_optimizer = optimizer
        param._zs_name = name


def _model_parallel_group(mpu):
    """The group of ranks holding other parameters than this one (None when there are none)."""
    if mpu is None or not hasattr(mpu, "get_model_parallel_group"):
        return None
    if hasattr(mpu, "get_model_parallel_world_size") and mpu.get_model_parallel_world_size() == 1:
        return None
    return mpu.get_model_parallel_group()


def _cast_floating(value, dtype: torch.dtype):
    """Cast fp32 tensors (nested in tuples/lists/dicts) to the model's half dtype."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.dtype == torch.float32 else value
    if isinstance(value, tuple):
        return tuple(_cast_floating(v, dtype) for v in value)
    if isinstance(value, list):
        return [_cast_floating(v, dtype) for v in value]
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
