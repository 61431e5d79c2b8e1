"""DeepSpeed's `deepspeed.runtime.zero` import paths, kept for user scripts; code lives in `zerospeed.zero`.

`zerospeed.runtime.zero.<submodule>` (partition_parameters, config, offload_config, stage3,
stage_1_and_2) loads on first access; any other name is looked up in `zerospeed.zero`
(`Init`, `GatheredParameters`, ...), as DeepSpeed's package re-exports them.
"""

from __future__ import annotations

import importlib.util
from typing import Any

_REEXPORTED = {"ZeroParamStatus": "zerospeed.runtime.zero.partition_parameters",
               "ZeroParamType": "zerospeed.runtime.zero.partition_parameters"}


def __getattr__(name: str) -> Any:
    import importlib

    from zerospeed.runtime.unsupported import attribute_error, submodule_attribute

    if name in _REEXPORTED:
        return getattr(importlib.import_module(_REEXPORTED[name]), name)
    if not name.startswith("__") and importlib.util.find_spec(f"zerospeed.runtime.zero.{name}") is not None:
        return submodule_attribute("zerospeed.runtime.zero", name)
    import zerospeed.zero

    try:
        return getattr(zerospeed.zero, name)
    except AttributeError:
        raise attribute_error("zerospeed.runtime.zero", name) from None
