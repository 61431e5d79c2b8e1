"""Small shared utilities, and DeepSpeed's `deepspeed.utils` names user scripts import."""

from zerospeed.utils.logging import log_dist, logger
from zerospeed.utils.tensor_fragment import (
    safe_get_full_fp32_param,
    safe_get_full_grad,
    safe_get_full_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
)

__all__ = [
    "log_dist", "logger", "safe_get_full_fp32_param", "safe_get_full_grad", "safe_get_full_optimizer_state",
    "safe_set_full_fp32_param", "safe_set_full_optimizer_state",
]
