"""DeepSpeed's `deepspeed.runtime.fp16.loss_scaler`: its scaler classes over zerospeed's one scaler.

zerospeed keeps one scaler class (`runtime.precision.LossScaler`, static or dynamic with
DeepSpeed's update rules). `LossScalerBase` is that class, so `isinstance(engine.loss_scaler,
LossScalerBase)` holds; `LossScaler` and `DynamicLossScaler` are subclasses taking DeepSpeed's
constructor arguments, for scripts that build a scaler themselves.
"""

from __future__ import annotations

import torch

from zerospeed.runtime.precision import LossScaler as LossScalerBase

# DeepSpeed's keys of `dynamic_loss_args`
INITIAL_LOSS_SCALE = "init_scale"
SCALE_WINDOW = "scale_window"
DELAYED_SHIFT = "delayed_shift"
CONSECUTIVE_HYSTERESIS = "consecutive_hysteresis"
MIN_LOSS_SCALE = "min_scale"


class LossScaler(LossScalerBase):
    """A static loss scale: `LossScaler(scale=1)`."""

    def __init__(self, scale: float = 1) -> None:
        super().__init__(cur_scale=float(scale))


class DynamicLossScaler(LossScalerBase):
    """A dynamic loss scale with DeepSpeed's arguments (scale window, hysteresis, minimum)."""

    def __init__(self, init_scale: float, scale_window: int, min_scale: float, delayed_shift: int,
                 consecutive_hysteresis: bool, raise_error_at_min_scale: bool = True, dtype: torch.dtype = torch.half) -> None:
        super().__init__(
            cur_scale=float(init_scale), dynamic=True, scale_window=int(scale_window), min_scale=float(min_scale),
            delayed_shift=int(delayed_shift), consecutive_hysteresis=bool(consecutive_hysteresis),
            raise_error_at_min_scale=bool(raise_error_at_min_scale),
        )
        self.dtype = dtype


def CreateLossScaler(dtype, static_loss_scale, dynamic_scaling, dynamic_loss_args):  # noqa: N802 - DeepSpeed's name
    """DeepSpeed's factory: dynamic for fp16 with `dynamic_scaling`, else static (1.0 unless fp16)."""
    if dtype == torch.half and dynamic_scaling:
        if dynamic_loss_args is None:
            raise ValueError("dynamic_loss_args is required for dynamic loss scaling (init_scale, scale_window, "
                             "min_scale, delayed_shift, consecutive_hysteresis)")
        return DynamicLossScaler(dtype=dtype, **dynamic_loss_args)
    return LossScaler(scale=static_loss_scale if dtype == torch.half else 1.0)


__all__ = ["CreateLossScaler", "DynamicLossScaler", "LossScaler", "LossScalerBase"]
