"""Pick the device once: `ZEROSPEED_ACCELERATOR` (or DeepSpeed's `DS_ACCELERATOR`), else detect."""

from __future__ import annotations

import os

from zerospeed.accelerator.abstract import Accelerator
from zerospeed.errors import ConfigError

_ACCELERATOR: Accelerator | None = None
SUPPORTED = ("cpu", "cuda")


def _build(name: str) -> Accelerator:
    if name == "cpu":
        from zerospeed.accelerator.cpu import CpuAccelerator

        return CpuAccelerator()
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"ZEROSPEED_ACCELERATOR='cuda' but torch sees no CUDA device; allowed here: 'cpu'")
    from zerospeed.accelerator.cuda import CudaAccelerator

    return CudaAccelerator()


def get_accelerator() -> Accelerator:
    """The process-wide accelerator, built on first use."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        requested = os.environ.get("ZEROSPEED_ACCELERATOR") or os.environ.get("DS_ACCELERATOR")
        if requested is not None:
            requested = requested.strip().lower()
            if requested not in SUPPORTED:
                raise ConfigError(
                    f"ZEROSPEED_ACCELERATOR={requested!r} is not a known accelerator; allowed: {', '.join(SUPPORTED)}"
                )
        else:
            import torch

            requested = "cuda" if torch.cuda.is_available() else "cpu"
        _ACCELERATOR = _build(requested)
    return _ACCELERATOR


def set_accelerator(accelerator: Accelerator | None) -> None:
    """Replace the process-wide accelerator (tests, or a custom device)."""
    global _ACCELERATOR
    _ACCELERATOR = accelerator


__all__ = ["Accelerator", "get_accelerator", "set_accelerator"]
