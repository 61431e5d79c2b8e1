"""Training precision: which dtype the model runs in, and fp16 loss scaling.

fp32 and bf16 need no scaling. fp16 scales the loss so small gradients survive the
half-precision backward, and after each step adapts the scale with DeepSpeed's rules
(scale window, hysteresis, consecutive hysteresis, minimum) so that a DeepSpeed fp16
run skips exactly the same steps here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zerospeed.errors import EngineError
from zerospeed.utils.logging import logger


@dataclass
class LossScaler:
    """A static or dynamic fp16 loss scale with DeepSpeed's update rules.

    A static scaler never changes; a dynamic one halves on overflow (once hysteresis is
    used up) and doubles after `scale_window` clean steps.
    """

    cur_scale: float = 1.0
    dynamic: bool = False
    scale_window: int = 1000
    min_scale: float = 1.0
    delayed_shift: int = 2
    consecutive_hysteresis: bool = False
    raise_error_at_min_scale: bool = True
    scale_factor: float = 2.0

    def __post_init__(self) -> None:
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self.cur_hysteresis = self.delayed_shift

    @property
    def loss_scale(self) -> float:
        return self.cur_scale

    def update_scale(self, overflow: bool) -> None:
        if not self.dynamic:
            return
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                if self.cur_scale == self.min_scale and self.raise_error_at_min_scale:
                    raise EngineError(
                        f"fp16 loss scale is already at fp16.min_loss_scale={self.min_scale} and gradients still "
                        f"overflow (step {self.cur_iter}): the model diverged or fp16 cannot represent it; "
                        f"try bf16, a lower lr, or gradient clipping"
                    )
                next_scale = max(self.cur_scale / self.scale_factor, self.min_scale)
                logger.info(f"fp16 overflow: skipping step, loss scale {self.cur_scale:g} -> {next_scale:g}")
                self.cur_scale = next_scale
            else:
                logger.info(f"fp16 overflow: skipping step, hysteresis {self.cur_hysteresis} -> {self.cur_hysteresis - 1}")
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            stable_interval = (self.cur_iter - self.last_overflow_iter) - 1
            if stable_interval > 0 and stable_interval % self.scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1

    def state_dict(self) -> dict:
        return {
            "cur_scale": self.cur_scale, "cur_iter": self.cur_iter, "last_overflow_iter": self.last_overflow_iter,
            "cur_hysteresis": self.cur_hysteresis,
        }

    def load_state_dict(self, state: dict) -> None:
        self.cur_scale = state["cur_scale"]
        self.cur_iter = state["cur_iter"]
        self.last_overflow_iter = state["last_overflow_iter"]
        self.cur_hysteresis = state["cur_hysteresis"]


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_from_name(name: str | None, default: torch.dtype) -> torch.dtype:
    return default if name is None else _DTYPES[name]


@dataclass(frozen=True)
class PrecisionPolicy:
    """Dtypes of one run: model params/activations, gradient accumulation, communication."""

    param_dtype: torch.dtype
    grad_accum_dtype: torch.dtype
    comm_dtype: torch.dtype

    @property
    def mixed(self) -> bool:
        return self.param_dtype != torch.float32


def precision_from_config(config) -> tuple[PrecisionPolicy, LossScaler]:
    """Build the policy and the loss scaler from the validated config."""
    if config.fp16.enabled:
        param_dtype = torch.float16
    elif config.bf16.enabled:
        param_dtype = torch.bfloat16
    else:
        param_dtype = torch.float32
    # Accumulating in fp32 keeps micro-step sums exact enough for parity; DeepSpeed users
    # may ask for the half dtype explicitly to save memory.
    accum = dtype_from_name(getattr(config.data_types, "grad_accum_dtype", None), torch.float32)
    comm = dtype_from_name(config.communication_data_type, accum)
    policy = PrecisionPolicy(param_dtype=param_dtype, grad_accum_dtype=accum, comm_dtype=comm)
    if not config.fp16.enabled:
        return policy, LossScaler()
    fp16 = config.fp16
    if fp16.loss_scale and fp16.loss_scale > 0:
        return policy, LossScaler(cur_scale=float(fp16.loss_scale))
    return policy, LossScaler(
        cur_scale=float(2 ** fp16.initial_scale_power),
        dynamic=True,
        scale_window=fp16.loss_scale_window,
        min_scale=float(fp16.min_loss_scale),
        delayed_shift=fp16.hysteresis,
        consecutive_hysteresis=fp16.consecutive_hysteresis,
    )
