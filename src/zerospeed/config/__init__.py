"""Config loading: DeepSpeed's JSON config in, one frozen validated ZeroSpeedConfig out.

    from zerospeed.config import load_config
    cfg = load_config("ds_config.json").resolved(world_size=8, auto_values={...})
"""

from __future__ import annotations

from typing import Any, Optional

from .compat import DeepSpeedConfig
from .model import ZeroSpeedConfig, build
from .source import read_source

__all__ = ["load_config", "ZeroSpeedConfig", "DeepSpeedConfig"]


def load_config(source: Any, *, world_size: Optional[int] = None) -> ZeroSpeedConfig:
    """Parse and validate a config; raises zerospeed.errors.ConfigError on any problem.

    source: path to .json/.hjson, JSON/HJSON text, base64 JSON, dict, argparse-like object
    with `.deepspeed_config`, or a ZeroSpeedConfig (returned as is, or re-resolved).
    With `world_size`, the batch triple is completed and checked now, unless some values
    are still "auto" (then call `resolved(world_size, auto_values)` once they are known).
    """
    if isinstance(source, ZeroSpeedConfig):
        config = source
    else:
        config = build(read_source(source))
    if world_size is not None and not config.unresolved_keys():
        config = config.resolved(world_size)
    return config
