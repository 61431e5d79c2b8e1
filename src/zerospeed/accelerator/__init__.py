"""Pick the device once: `ZEROSPEED_ACCELERATOR` (or DeepSpeed's `DS_ACCELERATOR`), else detect."""

from __future__ import annotations

import os
from collections.abc import Mapping

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
        raise ConfigError("ZEROSPEED_ACCELERATOR='cuda' but torch sees no CUDA device; allowed here: 'cpu'")
    from zerospeed.accelerator.cuda import CudaAccelerator

    return CudaAccelerator()


def accelerator_choice(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(name, why): which accelerator this process uses and the reason, without building it.

    `ZEROSPEED_ACCELERATOR` wins over DeepSpeed's `DS_ACCELERATOR`; with neither set,
    CUDA is used when torch sees a device, else CPU.
    """
    environ = os.environ if environ is None else environ
    for variable in ("ZEROSPEED_ACCELERATOR", "DS_ACCELERATOR"):
        raw = environ.get(variable)
        if raw:
            name = raw.strip().lower()
            if name not in SUPPORTED:
                raise ConfigError(
                    f"{variable}={raw!r} is not a known accelerator; allowed: {', '.join(SUPPORTED)}"
                )
            return name, f"{variable}={raw} in the environment"
    import torch

    if torch.cuda.is_available():
        return "cuda", f"detected: torch sees {torch.cuda.device_count()} CUDA device(s)"
    return "cpu", "detected: torch sees no CUDA device"


def get_accelerator() -> Accelerator:
    """The process-wide accelerator, built on first use."""
    global _ACCELERATOR
    if _ACCELERATOR is None:
        _ACCELERATOR = _build(accelerator_choice()[0])
    return _ACCELERATOR


def set_accelerator(accelerator: Accelerator | None) -> None:
    """Replace the process-wide accelerator (tests, or a custom device)."""
    global _ACCELERATOR
    _ACCELERATOR = accelerator


__all__ = ["Accelerator", "accelerator_choice", "get_accelerator", "set_accelerator"]
