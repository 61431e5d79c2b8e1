"""DeepSpeed's `deepspeed.runtime.zero` import paths, kept for user scripts; code lives in `zerospeed.zero`."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import zerospeed.zero

    return getattr(zerospeed.zero, name)
