"""zerospeed: DeepSpeed's user API and JSON config, with a simpler, faster runtime.

`import zerospeed as deepspeed` is the intended use. Submodules load lazily so that
`import zerospeed` costs little more than `import torch`.
"""

from __future__ import annotations

import importlib
from typing import Any

from zerospeed.version import __version__

_LAZY_ATTRS = {
    "initialize": "zerospeed.runtime.initialize",
    "add_config_arguments": "zerospeed.runtime.arguments",
    "add_core_arguments": "zerospeed.runtime.arguments",
    "init_distributed": "zerospeed.comm",
    "DeepSpeedEngine": "zerospeed.runtime.engine",
    "Engine": "zerospeed.runtime.engine",
    "DeepSpeedConfig": "zerospeed.config",
    "load_config": "zerospeed.config",
    "get_accelerator": "zerospeed.accelerator",
}
_LAZY_MODULES = (
    "comm", "zero", "accelerator", "config", "runtime", "utils", "checkpointing", "pipe", "ops", "errors", "launcher",
    "monitor", "profiling", "checkpoint",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        module = importlib.import_module(_LAZY_ATTRS[name])
        value = getattr(module, name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"zerospeed.{name}")
    else:
        raise AttributeError(f"module 'zerospeed' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRS, *_LAZY_MODULES])


__all__ = ["__version__", *_LAZY_ATTRS, *_LAZY_MODULES]
