"""DeepSpeed's `deepspeed.runtime.bf16_optimizer` path: `BF16_Optimizer` for isinstance checks.

DeepSpeed wraps a bf16 run without ZeRO partitioning (stage 0) in `BF16_Optimizer`; scripts
test `isinstance(engine.optimizer, BF16_Optimizer)` to pick a code path. zerospeed has one
optimizer wrapper for every stage and precision (`zero.partitioned_optimizer.ZeroOptimizer`),
so this class answers the same question about it: true for a stage-0 wrapper whose model
weights are bf16. It is not meant to be built directly: `zerospeed.initialize` builds the
optimizer from the config.
"""

from __future__ import annotations

import torch

from zerospeed.errors import EngineError


class _BF16OptimizerMeta(type):
    def __instancecheck__(cls, instance) -> bool:
        from zerospeed.zero.partitioned_optimizer import ZeroOptimizer

        if not isinstance(instance, ZeroOptimizer) or instance.stage != 0:
            return False
        buckets = [getattr(master, "bucket", None) for master in instance.masters]
        return any(bucket is not None and bucket.dtype == torch.bfloat16 for bucket in buckets)


class BF16_Optimizer(metaclass=_BF16OptimizerMeta):  # noqa: N801 - DeepSpeed's name
    """What DeepSpeed calls the bf16 stage-0 optimizer; `isinstance` recognizes zerospeed's."""

    def __init__(self, *args, **kwargs) -> None:
        raise EngineError("BF16_Optimizer is not built directly in zerospeed: pass the optimizer (or an 'optimizer' "
                          "config section) and bf16: {enabled: true} to zerospeed.initialize(), which wraps it")


__all__ = ["BF16_Optimizer"]
