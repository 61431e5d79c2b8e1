"""comms_logger: per-collective timing and volume logging (DeepSpeed comm/config.py)."""

from __future__ import annotations

from ._base import Bool, ConfigModel, StrList


class CommsLoggerConfig(ConfigModel):
    section = "comms_logger"
    enabled: Bool = False
    prof_all: Bool = True
    prof_ops: StrList = ()
    verbose: Bool = False
    debug: Bool = False
