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
    "PipelineEngine": "zerospeed.pipe.engine",
    "PipelineModule": "zerospeed.pipe",
    "DeepSpeedDataLoader": "zerospeed.runtime.dataloader",
    "is_compile_supported": "zerospeed.runtime.compiler",
    "log_dist": "zerospeed.utils.logging",
    "logger": "zerospeed.utils.logging",
    "version": "zerospeed.git_version_info",
    "git_hash": "zerospeed.git_version_info",
    "git_branch": "zerospeed.git_version_info",
    "OnDevice": "zerospeed.utils.init_on_device",
}
# DeepSpeed's name -> (module, zerospeed's name)
_LAZY_RENAMED = {
    "__git_hash__": ("zerospeed.git_version_info", "git_hash"),
    "__git_branch__": ("zerospeed.git_version_info", "git_branch"),
    "DeepSpeedConfigError": ("zerospeed.errors", "ConfigError"),
}
_LAZY_MODULES = (
    "comm", "zero", "accelerator", "config", "runtime", "utils", "checkpointing", "pipe", "ops", "errors", "launcher",
    "monitor", "profiling", "checkpoint", "git_version_info", "compression",
)
# submodules loaded with their package, so DeepSpeed's attribute paths reach them
_COMPANIONS = {"checkpoint": ("zerospeed.checkpoint.constants",)}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        module = importlib.import_module(_LAZY_ATTRS[name])
        value = getattr(module, name)
    elif name in _LAZY_RENAMED:
        module_name, attribute = _LAZY_RENAMED[name]
        value = getattr(importlib.import_module(module_name), attribute)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"zerospeed.{name}")
        for companion in _COMPANIONS.get(name, ()):
            importlib.import_module(companion)
    else:
        from zerospeed.runtime.unsupported import attribute_error

        raise attribute_error("zerospeed", name)  # DeepSpeed features not built get a NotProvidedError
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRS, *_LAZY_RENAMED, *_LAZY_MODULES])


def _install_import_hook() -> None:
    from zerospeed.runtime.unsupported import install_import_hook

    install_import_hook()  # `import zerospeed.moe` and the like: a clear "not provided" error


_install_import_hook()

__all__ = ["__version__", *_LAZY_ATTRS, *_LAZY_MODULES]
