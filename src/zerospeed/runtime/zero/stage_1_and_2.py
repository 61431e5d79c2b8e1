"""DeepSpeed's `deepspeed.runtime.zero.stage_1_and_2` path: `DeepSpeedZeroOptimizer` for isinstance
checks, and the stage 1/2 memory estimators.

DeepSpeed's stage-1/2 optimizer class is `DeepSpeedZeroOptimizer`; scripts test
`isinstance(engine.optimizer, DeepSpeedZeroOptimizer)` to pick a code path. zerospeed has one
wrapper for every stage (`zero.partitioned_optimizer.ZeroOptimizer`, which `Stage3Optimizer`
subclasses), so this name is a virtual class answering DeepSpeed's question about it: true for a
ZeroOptimizer at stage 1 or 2, false at stage 0 (DeepSpeed's is then FP16_Optimizer,
BF16_Optimizer or the bare torch optimizer) and at stage 3 (DeepSpeedZeroOptimizer_Stage3). It is
not built directly: `zerospeed.initialize` builds the optimizer from the config.
"""

from __future__ import annotations

from zerospeed.errors import EngineError
from zerospeed.zero.estimators import (  # noqa: F401
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_cold,
    estimate_zero2_model_states_mem_needs_all_live,
    model_to_params,
)


class _StageOneTwoMeta(type):
    def __instancecheck__(cls, instance) -> bool:
        from zerospeed.zero.partitioned_optimizer import ZeroOptimizer

        return isinstance(instance, ZeroOptimizer) and getattr(instance, "stage", None) in (1, 2)


class DeepSpeedZeroOptimizer(metaclass=_StageOneTwoMeta):
    """What DeepSpeed calls the ZeRO stage 1/2 optimizer; `isinstance` recognizes zerospeed's."""

    def __init__(self, *args, **kwargs) -> None:
        raise EngineError("DeepSpeedZeroOptimizer is not built directly in zerospeed: pass the optimizer (or an "
                          "'optimizer' config section) and zero_optimization.stage 1 or 2 to zerospeed.initialize()")
