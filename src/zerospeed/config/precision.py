"""fp16 / bf16 / torch_autocast / data_types sections: how numbers are stored and reduced.

Defaults are DeepSpeed 0.19.8's (runtime/precision_config.py). Dtype names accept
DeepSpeed's spellings ("bfloat16", "torch.float16", "half") and are stored in the
short form the engine compares against: "fp32" | "fp16" | "bf16".
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BeforeValidator, model_validator
from typing_extensions import Annotated

from ._base import AUTO_OK, Bool, ConfigModel, Float, Int, StrList, bad_value
from .messages import did_you_mean

_DTYPE_SPELLINGS = {
    "fp32": ("fp32", "float32", "float", "torch.float32"),
    "fp16": ("fp16", "float16", "half", "torch.float16"),
    "bf16": ("bf16", "bfloat16", "torch.bfloat16"),
    "int8": ("int8", "torch.int8"),
}


def dtype_name(value: Any, allowed: tuple[str, ...] = ("fp32", "fp16", "bf16")) -> Optional[str]:
    """Canonical short dtype name for any DeepSpeed spelling; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a dtype name such as 'bf16', got {type(value).__name__}")
    for short in allowed:
        if value.lower() in _DTYPE_SPELLINGS[short]:
            return short
    spellings = [s for short in allowed for s in _DTYPE_SPELLINGS[short]]
    raise ValueError(f"unknown dtype{did_you_mean(value, spellings)}; allowed: {list(allowed)}")


Dtype = Annotated[Optional[str], BeforeValidator(dtype_name)]
AutocastDtype = Annotated[Optional[str], BeforeValidator(lambda v: dtype_name(v, ("fp32", "fp16", "bf16", "int8")))]
CommDtype = Annotated[Optional[str], BeforeValidator(lambda v: None if v is None else _comm_dtype(v))]


def _comm_dtype(value: Any) -> str:
    # DeepSpeed accepts exactly these three (lower-cased) for communication_data_type
    if isinstance(value, str) and value.lower() in ("fp32", "fp16", "bf16"):
        return value.lower()
    raise ValueError("not allowed; allowed: 'fp32', 'fp16', 'bf16' or null")


class FP16Config(ConfigModel):
    """Mixed precision with fp16 weights and a (dynamic by default) loss scale."""

    section = "fp16"
    enabled: Bool = False
    auto_cast: Bool = False
    loss_scale: Float(ge=0) = 0.0  # 0 means dynamic loss scaling
    initial_scale_power: Int() = 16
    loss_scale_window: Int() = 1000
    hysteresis: Int() = 2
    consecutive_hysteresis: Bool = False
    min_loss_scale: Int() = 1
    fp16_master_weights_and_grads: Bool = False

    @model_validator(mode="after")
    def _dynamic_scale_sane(self) -> "FP16Config":
        if self.enabled and self.loss_scale == 0:
            if self.loss_scale_window <= 0:
                raise bad_value(self.loss_scale_window, "must be > 0 with dynamic loss scaling (loss_scale 0)",
                                "loss_scale_window")
            if self.min_loss_scale <= 0:
                raise bad_value(self.min_loss_scale, "must be > 0 with dynamic loss scaling (loss_scale 0)",
                                "min_loss_scale")
        return self

    def initial_dynamic_scale(self) -> float:
        return float(2**self.initial_scale_power)

    @property
    def dynamic_loss_scale(self) -> bool:
        return self.loss_scale == 0


class BF16Config(ConfigModel):
    """bfloat16 training; no loss scale needed, overflow check on by default (DS #5242)."""

    section = "bf16"
    aliases = {"check_overflow": "check_grad_overflow"}
    deprecated = {"check_overflow": ""}
    enabled: Bool = False
    immediate_grad_update: Bool = False
    check_grad_overflow: Bool = True
    bf16_master_weights_and_grads: Bool = False
    bf16_optimizer_states: Bool = False


class TorchAutocastConfig(ConfigModel):
    """torch.autocast around forward, as an alternative to fp16/bf16 weights."""

    section = "torch_autocast"
    enabled: Bool = False
    dtype: AutocastDtype = None
    lower_precision_safe_modules: Optional[StrList] = None


KeepInFp32 = Annotated[Union[str, tuple], BeforeValidator(
    lambda v: v if v == "auto" else _str_list(v, "'auto' or a list of module name patterns")), AUTO_OK]


def _str_list(value: Any, allowed: str) -> tuple:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"not allowed; allowed: {allowed}")


class DataTypesConfig(ConfigModel):
    """Dtypes of gradient accumulation buffers, params and buffers (None = follow precision)."""

    section = "data_types"
    grad_accum_dtype: Dtype = None
    param_dtype: Dtype = None
    buffer_dtype: Dtype = None
    keep_in_fp32_modules: KeepInFp32 = "auto"
