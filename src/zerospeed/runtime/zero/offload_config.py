"""DeepSpeed's `deepspeed.runtime.zero.offload_config` names: offload devices and sections.

`OffloadDeviceEnum` members are strings, so `config.offload_param.device ==
OffloadDeviceEnum.cpu` holds for zerospeed's configs, which store the device as "cpu".
"""

from __future__ import annotations

import enum

from zerospeed.config.offload import OffloadOptimizerConfig as DeepSpeedZeroOffloadOptimizerConfig
from zerospeed.config.offload import OffloadParamConfig as DeepSpeedZeroOffloadParamConfig


class OffloadDeviceEnum(str, enum.Enum):
    """Where an offloaded ZeRO partition lives."""

    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class OffloadStateTypeEnum(str, enum.Enum):
    """DeepSpeed's names of the buffers `engine.offload_states(include=...)` can move."""

    optim_states = "optim_states"
    hp_params = "hp_params"
    lp_params = "lp_params"
    lp_grads = "lp_grads"
    contiguous_grad_buffer = "contiguous_grad_buffer"


__all__ = [
    "DeepSpeedZeroOffloadOptimizerConfig", "DeepSpeedZeroOffloadParamConfig", "OffloadDeviceEnum",
    "OffloadStateTypeEnum",
]
