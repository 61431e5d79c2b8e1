"""DeepSpeed's `deepspeed.runtime.zero.stage_1_and_2` path for the stage 1/2 memory estimators."""

from zerospeed.zero.estimators import (  # noqa: F401
    estimate_zero2_model_states_mem_needs,
    estimate_zero2_model_states_mem_needs_all_cold,
    estimate_zero2_model_states_mem_needs_all_live,
    model_to_params,
)
