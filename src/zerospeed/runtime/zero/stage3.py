"""DeepSpeed's `deepspeed.runtime.zero.stage3` path for the stage-3 memory estimators."""

from zerospeed.zero.stage3.estimators import (  # noqa: F401
    estimate_zero3_model_states_mem_needs,
    estimate_zero3_model_states_mem_needs_all_cold,
    estimate_zero3_model_states_mem_needs_all_live,
    model_to_params,
)
