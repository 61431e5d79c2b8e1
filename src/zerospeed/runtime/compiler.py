"""DeepSpeed's `deepspeed.runtime.compiler` helpers: whether torch.compile can be used here."""

from __future__ import annotations

import torch


def is_compile_supported() -> bool:
    """torch.compile exists (torch >= 2.1 with `torch.compiler` and `Module.compile`)."""
    return hasattr(torch, "compiler") and hasattr(torch.nn.Module, "compile")


def is_compiling() -> bool:
    """True while torch.compile is tracing the calling code."""
    return bool(torch.compiler.is_compiling()) if is_compile_supported() else False


def disable(func):
    """Keep `func` out of torch.compile graphs (a no-op where compile is unsupported)."""
    return torch.compiler.disable(func) if is_compile_supported() else func


__all__ = ["disable", "is_compile_supported", "is_compiling"]
