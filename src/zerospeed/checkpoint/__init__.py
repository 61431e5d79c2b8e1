"""Checkpoints: a documented on-disk format, atomic saves, loads at any world size or ZeRO stage.

`saver` and `loader` move engine state to and from the layout in `layout`; `universal`
holds the resharding arithmetic; `consolidate` builds full fp32 weights offline. The
engine's `save_checkpoint` / `load_checkpoint` delegate to `engine_io`.
"""

from __future__ import annotations

import importlib
from typing import Any

# DeepSpeed's `deepspeed.checkpoint` submodules kept under the same names, resolved on attribute
# access however the package was first imported (`import zerospeed`, `import zerospeed.checkpoint`)
_DEEPSPEED_SUBMODULES = ("constants", "utils")
# names DeepSpeed's package re-exports from those submodules (it star-imports constants)
_DEEPSPEED_UTILS_NAMES = ("get_layer_ckpt_name_for_rank", "get_model_ckpt_name_for_rank", "get_zero_ckpt_name_for_rank")


def __getattr__(name: str) -> Any:
    if name in _DEEPSPEED_SUBMODULES:
        return importlib.import_module(f"zerospeed.checkpoint.{name}")
    if name in _DEEPSPEED_UTILS_NAMES:
        return getattr(importlib.import_module("zerospeed.checkpoint.utils"), name)
    if name.isupper():
        constants = importlib.import_module("zerospeed.checkpoint.constants")
        if hasattr(constants, name):
            return getattr(constants, name)
    from zerospeed.runtime.unsupported import attribute_error

    raise attribute_error("zerospeed.checkpoint", name)
