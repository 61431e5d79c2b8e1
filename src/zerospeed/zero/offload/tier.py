"""Memory tiers a ZeRO partition can live in, behind the narrow interface the optimizer uses.

Optimizer side (masters + optimizer states, stages 1-3). The optimizer steps chunk by chunk:

    for index in range(tier.num_chunks):
        masters = tier.swap_in(index)      # resident now (waits for its read, starts the next)
        ... bind grads, step those masters' pieces, write back ...
        tier.swap_out(index)               # written (asynchronously), memory released
    tier.finish()                          # every write is on disk

`materialized(masters=None)` swaps everything (or those masters' chunks) in for code that
reads or writes masters and states outside a step (checkpoints, `safe_*` helpers); the
changes are written back when the block exits. `ResidentTier` (offload none / cpu) has one
chunk holding every master and no-op swaps; `nvme.NVMeOptimizerTier` swaps to files.

Parameter side (stage 3 shards): `ResidentParamTier` keeps shards in memory;
`nvme_params.NVMeParamTier` makes units that read their shard on fetch and write it
after the optimizer step changed it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from zerospeed.io import IOPolicy


@dataclass(frozen=True)
class NVMeSettings:
    """offload_optimizer / offload_param NVMe keys, zero_optimization.sub_group_size and aio."""

    io: IOPolicy = IOPolicy()
    optimizer_path: str | None = None  # set when offload_optimizer.device == "nvme"
    buffer_count: int = 4
    pipeline_read: bool = False
    pipeline_write: bool = False
    sub_group_size: int = 1_000_000_000
    param_path: str | None = None  # set when offload_param.device == "nvme"
    param_buffer_count: int = 5
    param_buffer_size: int = 100_000_000
    max_in_cpu: int = 1_000_000_000

    @classmethod
    def from_config(cls, config) -> "NVMeSettings | None":
        """From a validated ZeroSpeedConfig; None when nothing is offloaded to NVMe."""
        zero = config.zero_optimization
        optimizer, param = zero.offload_optimizer, zero.offload_param
        optimizer_nvme = optimizer is not None and optimizer.device == "nvme"
        param_nvme = param is not None and param.device == "nvme"
        if not (optimizer_nvme or param_nvme):
            return None
        settings = {"io": IOPolicy.from_config(getattr(config, "aio", None)), "sub_group_size": int(zero.sub_group_size)}
        if optimizer_nvme:
            settings.update(optimizer_path=optimizer.nvme_path, buffer_count=int(optimizer.buffer_count),
                            pipeline_read=bool(optimizer.pipeline_read), pipeline_write=bool(optimizer.pipeline_write))
        if param_nvme:
            settings.update(param_path=param.nvme_path, param_buffer_count=int(param.buffer_count),
                            param_buffer_size=int(param.buffer_size), max_in_cpu=int(param.max_in_cpu))
        return cls(**settings)


class ResidentTier:
    """Masters and optimizer states stay in memory (device or CPU): one chunk, nothing to swap."""

    def __init__(self, masters: list | None = None) -> None:
        self.masters = list(masters or [])

    def add(self, master) -> None:
        self.masters.append(master)

    def attach(self, optimizer) -> None:
        pass

    @property
    def num_chunks(self) -> int:
        return 1

    @property
    def chunked(self) -> bool:
        """Whether a chunk holds only part of the masters (the step must be restricted to it)."""
        return False

    def swap_in(self, index: int) -> list:
        return self.masters

    def swap_out(self, index: int) -> None:
        pass

    def finish(self) -> None:
        pass

    @contextlib.contextmanager
    def materialized(self, masters=None):
        yield

    def require_resident(self, what: str) -> None:
        pass

    def bucket_numel_limit(self, world_size: int) -> int | None:
        return None

    def close(self) -> None:
        pass


class ResidentParamTier:
    """Stage-3 shards stay in memory (compute device, or CPU with offload_param cpu)."""

    resident = True

    def make_unit(self, *args, **kwargs):
        from zerospeed.zero.stage3.params import ParamUnit

        return ParamUnit(*args, **kwargs)

    def seal(self, units: list) -> None:
        pass

    def store(self, unit, values) -> None:
        """The optimizer step changed this rank's master: update the unit's shard."""
        unit.shard.copy_(values, non_blocking=True)

    @contextlib.contextmanager
    def readable(self, unit):
        yield

    def close(self) -> None:
        pass


def _global_rank() -> int:
    from zerospeed import comm

    return comm.get_rank() if comm.is_initialized() else 0


def build_optimizer_tier(offload, *, expected_numel: int, group=None):
    """The tier `offload` (an OffloadPolicy) asks for; `expected_numel`: this rank's master elements."""
    nvme = getattr(offload, "nvme", None)
    if offload.device != "nvme":
        return ResidentTier()
    if nvme is None or nvme.optimizer_path is None:
        from zerospeed.errors import ConfigError

        raise ConfigError("zero_optimization.offload_optimizer.device='nvme' needs offload_optimizer.nvme_path")
    from zerospeed.zero.offload.nvme import NVMeOptimizerTier

    return NVMeOptimizerTier(nvme, rank=_global_rank(), expected_numel=expected_numel, group=group)


def build_param_tier(offload, device: str, *, expected_bytes: int, group=None):
    """Stage-3 parameter tier for offload_param.device `device`."""
    nvme = getattr(offload, "nvme", None)
    if device != "nvme":
        return ResidentParamTier()
    if nvme is None or nvme.param_path is None:
        from zerospeed.errors import ConfigError

        raise ConfigError("zero_optimization.offload_param.device='nvme' needs offload_param.nvme_path")
    from zerospeed.zero.offload.nvme_params import NVMeParamTier

    return NVMeParamTier(nvme, rank=_global_rank(), expected_bytes=expected_bytes, group=group)
