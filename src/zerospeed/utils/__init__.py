"""Small shared utilities, and DeepSpeed's `deepspeed.utils` names user scripts import."""

from zerospeed.utils.logging import log_dist, logger
from zerospeed.utils.tensor_fragment import (
    safe_get_full_fp32_param,
    safe_get_full_grad,
    safe_get_full_optimizer_state,
    safe_get_local_fp32_param,
    safe_get_local_grad,
    safe_get_local_optimizer_state,
    safe_set_full_fp32_param,
    safe_set_full_optimizer_state,
    safe_set_local_fp32_param,
    safe_set_local_grad,
    safe_set_local_optimizer_state,
)

# name -> module, loaded on first access (groups needs comm; RepeatingLoader needs the data module)
_LAZY = {
    "groups": "zerospeed.utils.groups",
    "RepeatingLoader": "zerospeed.runtime.data",
    "OnDevice": "zerospeed.utils.init_on_device",
    "recursive_getattr": "zerospeed.utils.module_utils",
    "recursive_setattr": "zerospeed.utils.module_utils",
}


def __getattr__(name: str):
    import importlib
    import importlib.util

    from zerospeed.runtime.unsupported import attribute_error, submodule_attribute

    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__.endswith(f".{name}") else getattr(module, name)
    if name.startswith("__") or importlib.util.find_spec(f"zerospeed.utils.{name}") is None:
        raise attribute_error("zerospeed.utils", name)
    return submodule_attribute("zerospeed.utils", name)


__all__ = [
    "OnDevice", "RepeatingLoader", "groups", "recursive_getattr", "recursive_setattr", "log_dist", "logger",
    "safe_get_full_fp32_param", "safe_get_full_grad",
    "safe_get_full_optimizer_state", "safe_get_local_fp32_param", "safe_get_local_grad",
    "safe_get_local_optimizer_state", "safe_set_full_fp32_param", "safe_set_full_optimizer_state",
    "safe_set_local_fp32_param", "safe_set_local_grad", "safe_set_local_optimizer_state",
]
