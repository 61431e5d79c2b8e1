"""scheduler: {type, params}, with params checked per scheduler type.

DeepSpeed looks the type up in its lr_schedules module first, then in
torch.optim.lr_scheduler; so do we (case-insensitively, stored in the class's spelling).
Unlike DeepSpeed, a WarmupDecayLR without total_num_steps or an unknown warmup_type
fails here instead of at the first step (or silently falling back to "log").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import model_validator

from ._base import ConfigModel, FreeDict, FrozenDict, bad_value
from .messages import did_you_mean
from .params import ParamError, boolean, check_params, choice, integer, number, numbers, optional, \
    schema_from_signature

_STEP = integer()
_WARMUP = {
    "warmup_min_lr": numbers(ge=0.0), "warmup_max_lr": optional(numbers(ge=0.0)),
    "warmup_num_steps": integer(gt=0), "warmup_type": choice("log", "linear"), "last_batch_iteration": _STEP,
}
_COSINE = {
    "total_num_steps": integer(gt=0), "warmup_min_ratio": number(ge=0.0), "warmup_num_steps": integer(gt=0),
    "cos_min_ratio": number(ge=0.0), "warmup_type": choice("log", "linear"), "last_batch_iteration": _STEP,
}
_ONE_CYCLE = {
    "cycle_min_lr": numbers(ge=0.0), "cycle_max_lr": numbers(ge=0.0), "decay_lr_rate": number(ge=0.0),
    "cycle_first_step_size": integer(gt=0), "cycle_second_step_size": optional(integer(gt=0)),
    "cycle_first_stair_count": integer(ge=0), "cycle_second_stair_count": optional(integer(ge=0)),
    "decay_step_size": integer(ge=0), "cycle_momentum": boolean, "cycle_min_mom": number(ge=0.0),
    "cycle_max_mom": number(ge=0.0), "decay_mom_rate": number(ge=0.0), "last_batch_iteration": _STEP,
}
_RANGE_TEST = {
    "lr_range_test_min_lr": numbers(ge=0.0), "lr_range_test_step_size": integer(gt=0),
    "lr_range_test_step_rate": number(ge=0.0), "lr_range_test_staircase": boolean, "last_batch_iteration": _STEP,
}

# type -> (param kinds, required params)
DEEPSPEED_SCHEDULERS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "WarmupLR": (_WARMUP, ()),
    "WarmupDecayLR": ({**_WARMUP, "total_num_steps": integer(gt=0)}, ("total_num_steps",)),
    "WarmupCosineLR": (_COSINE, ("total_num_steps",)),
    "OneCycle": (_ONE_CYCLE, ("cycle_min_lr", "cycle_max_lr")),
    "LRRangeTest": (_RANGE_TEST, ()),
}


@lru_cache(maxsize=None)
def torch_schedulers() -> dict[str, type]:
    import torch.optim.lr_scheduler as lr_scheduler

    base = lr_scheduler.LRScheduler
    return {name.lower(): cls for name, cls in vars(lr_scheduler).items()
            if isinstance(cls, type) and issubclass(cls, base) and cls is not base and not name.startswith("_")}


def canonical_scheduler(name: str) -> str:
    for known in DEEPSPEED_SCHEDULERS:
        if known.lower() == name.lower():
            return known
    if name.lower() in torch_schedulers():
        return torch_schedulers()[name.lower()].__name__
    known = list(DEEPSPEED_SCHEDULERS) + sorted(cls.__name__ for cls in torch_schedulers().values())
    raise ValueError(f"unknown scheduler type{did_you_mean(name, known)}; allowed: {', '.join(known)}")


def scheduler_schema(canonical: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    if canonical in DEEPSPEED_SCHEDULERS:
        return DEEPSPEED_SCHEDULERS[canonical]
    return schema_from_signature(torch_schedulers()[canonical.lower()], skip=("self", "optimizer"))


class SchedulerConfig(ConfigModel):
    """The LR scheduler DeepSpeed builds from the config (ignored if the script passes one)."""

    section = "scheduler"
    type: str
    params: FreeDict = FrozenDict()

    @model_validator(mode="after")
    def _check_type_and_params(self) -> "SchedulerConfig":
        try:
            canonical = canonical_scheduler(self.type)
        except ValueError as error:
            raise bad_value(self.type, str(error), "type") from None
        schema, required = scheduler_schema(canonical)
        try:
            params = check_params(f"scheduler type '{canonical}'", dict(self.params), schema, required)
        except ParamError as error:
            raise bad_value(error.value, error.problem, f"params.{error.key}") from None
        object.__setattr__(self, "type", canonical)
        object.__setattr__(self, "params", params)
        return self
