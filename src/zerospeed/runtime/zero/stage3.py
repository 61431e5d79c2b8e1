"""DeepSpeed's `deepspeed.runtime.zero.stage3` path: `DeepSpeedZeroOptimizer_Stage3` and the
stage-3 memory estimators.

`DeepSpeedZeroOptimizer_Stage3` is zerospeed's `Stage3Optimizer` itself, so
`isinstance(engine.optimizer, DeepSpeedZeroOptimizer_Stage3)` is true exactly at stage 3.
"""

from zerospeed.zero.stage3.estimators import (  # noqa: F401
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_cold,
    estimate_zero3_model_states_mem_needs_all_live,
    model_to_params,
)
from zerospeed.zero.stage3.optimizer import Stage3Optimizer as DeepSpeedZeroOptimizer_Stage3  # noqa: F401, N812
