"""DeepSpeed's `deepspeed.runtime.config` path: `DeepSpeedConfig` is zerospeed's view of the config."""

from __future__ import annotations

from zerospeed.config.compat import DeepSpeedConfig
from zerospeed.errors import ConfigError as DeepSpeedConfigError

__all__ = ["DeepSpeedConfig", "DeepSpeedConfigError"]
