"""ZeRO: partitioned optimizer states (1), gradients (2) and parameters (3)."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Init": "zerospeed.zero.init",
    "GatheredParameters": "zerospeed.zero.init",
    "register_external_parameter": "zerospeed.zero.init",
    "unregister_external_parameter": "zerospeed.zero.init",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zerospeed.zero' has no attribute {name!r}")
