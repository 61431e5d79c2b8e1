"""Build the LR schedule a config's `scheduler` section names (classes in `lr_schedules`).

Types: DeepSpeed's five (LRRangeTest, OneCycle, WarmupLR, WarmupDecayLR, WarmupCosineLR; any
case) and, as DeepSpeed allows, any torch.optim.lr_scheduler class by name. Parameters are
checked against the class's signature first: an unknown key, a missing required one
(WarmupDecayLR without total_num_steps, which DeepSpeed accepts and then crashes on) or an
unknown warmup_type raises ConfigError naming it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import torch

from zerospeed.errors import ConfigError
from zerospeed.runtime import lr_schedules

__all__ = ["build_scheduler", "resolve_scheduler"]

_PATH = "scheduler"
_OWN_SCHEDULES = {name.lower(): getattr(lr_schedules, name) for name in lr_schedules.VALID_LR_SCHEDULES}


def _torch_schedulers() -> dict[str, type]:
    found = {}
    base = torch.optim.lr_scheduler.LRScheduler
    for name in dir(torch.optim.lr_scheduler):
        value = getattr(torch.optim.lr_scheduler, name)
        if isinstance(value, type) and issubclass(value, base) and value is not base and not name.startswith("_"):
            found[name.lower()] = value
    return found


def _section(config: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(config, dict):
        kind, params = config.get("type"), config.get("params")
    else:
        kind, params = getattr(config, "type", None), getattr(config, "params", None)
    if not isinstance(kind, str) or not kind:
        allowed = ", ".join(lr_schedules.VALID_LR_SCHEDULES)
        raise ConfigError(f"{_PATH}.type = {kind!r}: expected the scheduler's name; allowed: {allowed}")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{_PATH}.params = {params!r}: expected an object of scheduler arguments")
    return kind, dict(params)


def _hint(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def resolve_scheduler(scheduler_config: Any) -> tuple[type, dict[str, Any]]:
    """The schedule class and its keyword arguments for a config, validated; builds nothing."""
    kind, params = _section(scheduler_config)
    name = kind.lower()
    cls = _OWN_SCHEDULES.get(name) or _torch_schedulers().get(name)
    if cls is None:
        choices = [*lr_schedules.VALID_LR_SCHEDULES, *sorted(c.__name__ for c in _torch_schedulers().values())]
        raise ConfigError(f"{_PATH}.type = {kind!r}: unknown scheduler type{_hint(kind, choices)}; "
                          f"allowed: {', '.join(choices)}")
    signature = inspect.signature(cls.__init__)
    after_optimizer = list(signature.parameters.items())[2:]  # skip self, optimizer
    accepted = {n: p for n, p in after_optimizer if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for key, value in params.items():
        if key not in accepted:
            raise ConfigError(f"{_PATH}.params.{key} = {value!r}: unknown parameter for scheduler type "
                              f"'{cls.__name__}'{_hint(key, list(accepted))}; allowed: {', '.join(accepted)}")
    missing = [n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params]
    if missing:
        raise ConfigError(f"{_PATH}.params.{missing[0]}: required by scheduler type '{cls.__name__}' but missing; "
                          f"required: {', '.join(missing)}")
    warmup_type = params.get(lr_schedules.WARMUP_TYPE)
    if warmup_type is not None and warmup_type not in (lr_schedules.WARMUP_LOG_RATE, lr_schedules.WARMUP_LINEAR_RATE):
        raise ConfigError(f"{_PATH}.params.warmup_type = {warmup_type!r}: unknown warmup type; allowed: log, linear")
    return cls, params


def build_scheduler(scheduler_config: Any, optimizer: Any) -> Any:
    """The schedule `scheduler_config` (`.type`/`.params` or a dict) describes, driving `optimizer`.

    Returns None when there is no scheduler section. Our schedules accept a wrapper holding
    the torch optimizer as `.optimizer`; torch's need the torch optimizer itself.
    """
    if scheduler_config is None:
        return None
    cls, params = resolve_scheduler(scheduler_config)
    if not cls.__module__.startswith("zerospeed."):
        optimizer = lr_schedules.get_torch_optimizer(optimizer)
    try:
        return cls(optimizer, **params)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{_PATH}.params for type '{cls.__name__}': {error}") from error
