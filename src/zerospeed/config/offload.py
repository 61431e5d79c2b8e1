"""offload_param / offload_optimizer: which memory tier holds a ZeRO partition.

The tier ("none" | "cpu" | "nvme") is all the offload layer needs; the stage decides
what is partitioned. NVMe needs a path, checked here so a missing path fails at load
time on every rank instead of at the first swap on one.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BeforeValidator, model_validator
from typing_extensions import Annotated

from ._base import Bool, Choice, ConfigModel, Float, Int, bad_value

DEVICES = ("none", "cpu", "nvme")
Path = Annotated[Optional[str], BeforeValidator(lambda v: None if v is None else _path(v))]


def _path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty path string")
    return value


class _OffloadBase(ConfigModel):
    device: Choice(*DEVICES) = "none"
    nvme_path: Path = None
    pin_memory: Bool = True

    @model_validator(mode="after")
    def _nvme_needs_path(self):
        if self.device == "nvme" and self.nvme_path is None:
            raise bad_value(None, "required when device is 'nvme'", "nvme_path")
        return self

    @property
    def enabled(self) -> bool:
        return self.device != "none"


class OffloadParamConfig(_OffloadBase):
    """Parameter offload (stage 3 only)."""

    section = "zero_optimization.offload_param"
    buffer_count: Int(ge=0) = 5
    buffer_size: Int(ge=0) = 100_000_000
    max_in_cpu: Int(ge=0) = 1_000_000_000


class OffloadOptimizerConfig(_OffloadBase):
    """Optimizer state offload (stages 1-3); the optimizer step runs on CPU."""

    section = "zero_optimization.offload_optimizer"
    buffer_count: Int(ge=0) = 4
    pipeline_read: Bool = False
    pipeline_write: Bool = False
    fast_init: Bool = False
    ratio: Float(ge=0.0, le=1.0) = 1.0
    super_offload: Bool = False
    cpuadam_cores_perc: Float(ge=0.0, le=1.0) = 0.8

    @property
    def pipeline(self) -> bool:
        return self.pipeline_read or self.pipeline_write
