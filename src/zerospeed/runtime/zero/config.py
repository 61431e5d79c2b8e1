"""DeepSpeed's `deepspeed.runtime.zero.config` names: the zero_optimization section's model and stages."""

from __future__ import annotations

import enum

from zerospeed.config.zero import ZeroConfig as DeepSpeedZeroConfig


class ZeroStageEnum(int, enum.Enum):
    """The ZeRO stages by DeepSpeed's names; members compare equal to the stage integers."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 3  # an alias of `weights`, as in DeepSpeed


__all__ = ["DeepSpeedZeroConfig", "ZeroStageEnum"]
