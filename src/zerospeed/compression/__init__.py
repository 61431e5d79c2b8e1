"""DeepSpeed's `deepspeed.compression` path: only `helper` (recursive_getattr / recursive_setattr).

DeepSpeed 0.19.8 itself keeps no more than this shim of its removed compression library, which
DeepSpeed-Chat-style scripts still import from. Every other name under it is a feature zerospeed
does not build and raises `NotProvidedError` / `NotProvidedImportError` saying so
(runtime/unsupported.py).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from zerospeed.runtime.unsupported import attribute_error, submodule_attribute

    if name == "helper":
        return submodule_attribute("zerospeed.compression", name)
    raise attribute_error("zerospeed.compression", name)
