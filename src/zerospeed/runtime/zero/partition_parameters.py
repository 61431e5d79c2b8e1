"""DeepSpeed's `deepspeed.runtime.zero.partition_parameters` names over `zerospeed.zero`.

Scripts written for DeepSpeed test `param.ds_status == ZeroParamStatus.NOT_AVAILABLE` and
build `Init` / `GatheredParameters` from this path; the objects are zerospeed's own.
"""

from __future__ import annotations

import enum

import torch

from zerospeed.zero.init import GatheredParameters, Init, register_external_parameter, unregister_external_parameter
from zerospeed.zero.stage3.params import ZeroParamStatus


class ZeroParamType(enum.Enum):
    """DeepSpeed's parameter kinds; every stage-3 parameter here is PARTITIONED."""

    NORMAL = 1
    PARTITIONED = 2
    REMOTE = 3


def is_zero_param(parameter) -> bool:
    """Whether `parameter` is a ZeRO-3 partitioned parameter (carries `ds_id`), as in DeepSpeed."""
    return isinstance(parameter, torch.Tensor) and hasattr(parameter, "ds_id")


__all__ = [
    "GatheredParameters", "Init", "ZeroParamStatus", "ZeroParamType", "is_zero_param",
    "register_external_parameter", "unregister_external_parameter",
]
