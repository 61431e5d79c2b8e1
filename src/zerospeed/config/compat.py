"""DeepSpeedConfig(config, mpu=None): DeepSpeed's config class, as a thin view of ours.

Some scripts build `deepspeed.runtime.config.DeepSpeedConfig` directly to read batch
sizes or the ZeRO stage; this gives them the same attribute names over ZeroSpeedConfig.
"""

from __future__ import annotations

from typing import Any, Optional


def _world_size(mpu: Any) -> int:
    if mpu is not None and hasattr(mpu, "get_data_parallel_world_size"):
        return int(mpu.get_data_parallel_world_size())
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except Exception:  # no torch.distributed: one process
        pass
    return 1


class DeepSpeedConfig:
    """DeepSpeed-named attributes over a resolved ZeroSpeedConfig (`.config`)."""

    def __init__(self, config: Any, mpu: Any = None, mesh_device: Any = None,
                 world_size: Optional[int] = None):
        from . import load_config

        parsed = load_config(config)
        self.world_size = world_size or _world_size(mpu)
        self.config = parsed if parsed.unresolved_keys() else parsed.resolved(self.world_size)
        self._param_dict = parsed._source
        cfg = self.config
        self.train_batch_size = cfg.train_batch_size
        self.train_micro_batch_size_per_gpu = cfg.train_micro_batch_size_per_gpu
        self.gradient_accumulation_steps = cfg.gradient_accumulation_steps
        self.zero_config = cfg.zero_optimization
        self.zero_optimization_stage = cfg.zero_optimization.stage
        self.zero_enabled = cfg.zero_enabled
        self.float16_config, self.bfloat16_config = cfg.fp16, cfg.bf16
        self.fp16_enabled, self.bf16_enabled = cfg.fp16.enabled, cfg.bf16.enabled
        self.fp16_auto_cast = cfg.fp16.auto_cast
        self.gradient_clipping = cfg.gradient_clipping
        self.optimizer_name = cfg.optimizer.type if cfg.optimizer else None
        self.optimizer_params = dict(cfg.optimizer.params) if cfg.optimizer else None
        self.scheduler_name = cfg.scheduler.type if cfg.scheduler else None
        self.scheduler_params = dict(cfg.scheduler.params) if cfg.scheduler else None
        self.monitor_config = cfg

    def __getattr__(self, name: str) -> Any:
        # only reached for names not set above: fall back to the config's own keys
        return getattr(self.__dict__["config"], name)

    def print(self, name: str) -> None:
        from zerospeed.utils.logging import log_dist

        log_dist(f"{name}: {self.config.to_dict()}")
