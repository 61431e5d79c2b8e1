"""DeepSpeed's `deepspeed.utils.module_utils`: get and set a submodule (or any attribute) by dotted name."""

from __future__ import annotations

from typing import Any


def recursive_getattr(model: Any, module_name: str) -> Any:
    """`model.<module_name>` for a dotted name such as "encoder.layer.0.attention"."""
    value = model
    for name in module_name.split("."):
        value = getattr(value, name)
    return value


def recursive_setattr(model: Any, module_name: str, module: Any) -> None:
    """Set `model.<module_name>` to `module` (the parent is found by the dotted path's head)."""
    parent_path, _, leaf = module_name.rpartition(".")
    parent = recursive_getattr(model, parent_path) if parent_path else model
    setattr(parent, leaf, module)


__all__ = ["recursive_getattr", "recursive_setattr"]
