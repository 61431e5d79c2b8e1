"""Per-type `params` checking shared by the optimizer and scheduler sections.

`params` stays a dict (the contract: it is passed as keyword arguments to the optimizer
or scheduler class), but every key is checked against the class's parameter names and
every value against its kind, so `lr: "fast"` or `warmup_num_step` fail at load time.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from ._base import AUTO, freeze, to_bool, to_float, to_int
from .messages import did_you_mean

Kind = Callable[[Any], Any]


def number(**bounds: Any) -> Kind:
    """A float parameter (ints accepted, booleans and strings refused)."""

    def check(value: Any) -> float | int:
        out = to_float(value)
        _bounds(out, **bounds)
        return value if isinstance(value, int) else out

    return check


def integer(**bounds: Any) -> Kind:
    def check(value: Any) -> int:
        out = to_int(value)
        _bounds(out, **bounds)
        return out

    return check


def optional(kind: Kind) -> Kind:
    return lambda value: None if value is None else kind(value)


def numbers(**bounds: Any) -> Kind:
    """A number, or one number per param group (DeepSpeed schedulers accept both)."""
    one = number(**bounds)

    def check(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(one(v) for v in value)
        return one(value)

    return check


def pair(**bounds: Any) -> Kind:
    """Two numbers, e.g. Adam's betas."""
    one = number(**bounds)

    def check(value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError("expected a list of two numbers, e.g. [0.9, 0.999]")
        return tuple(one(v) for v in value)

    return check


def choice(*allowed: str) -> Kind:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"not allowed{did_you_mean(str(value), allowed)}; allowed: {list(allowed)}")
        return value

    return check


def boolean(value: Any) -> bool:
    return to_bool(value)


def anything(value: Any) -> Any:
    return value


def _bounds(value: float, ge: float | None = None, gt: float | None = None, lt: float | None = None) -> None:
    if ge is not None and value < ge:
        raise ValueError(f"must be >= {ge}")
    if gt is not None and value <= gt:
        raise ValueError(f"must be > {gt}")
    if lt is not None and value >= lt:
        raise ValueError(f"must be < {lt}")


def schema_from_signature(cls: type, skip: tuple[str, ...]) -> tuple[dict[str, Kind], tuple[str, ...]]:
    """Parameter kinds and required names of a torch class, read from its __init__."""
    schema: dict[str, Kind] = {}
    required = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default
        if default is inspect.Parameter.empty:
            required.append(name)
            schema[name] = anything
        elif isinstance(default, bool):
            schema[name] = optional(boolean)
        elif isinstance(default, (int, float)):
            schema[name] = number()
        elif isinstance(default, tuple) and len(default) == 2:
            schema[name] = pair()
        else:
            schema[name] = anything
    return schema, tuple(required)


def check_params(where: str, params: Any, schema: dict[str, Kind], required: tuple[str, ...] = (),
                 rejected: dict[str, str] | None = None) -> dict:
    """Validated, frozen copy of `params`; raises ValueError('<key> = <value>: <problem>').

    "auto" passes through any kind: `resolved()` must replace it before use.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params: expected an object {{...}}, got {type(params).__name__}")
    out = {}
    for key, value in params.items():
        if rejected and key in rejected:
            raise ParamError(key, value, rejected[key])
        if key not in schema:
            raise ParamError(key, value, f"unknown parameter for {where}{did_you_mean(key, schema)}; "
                             f"allowed: {', '.join(sorted(schema))}")
        if value == AUTO:
            out[key] = AUTO
            continue
        try:
            out[key] = schema[key](value)
        except ValueError as error:
            raise ParamError(key, value, str(error)) from None
    missing = [name for name in required if name not in out]
    if missing:
        raise ParamError(missing[0], None, f"required by {where}")
    return freeze(out)


class ParamError(ValueError):
    """One bad entry in `params`: the key below `params`, its value and the problem."""

    def __init__(self, key: str, value: Any, problem: str):
        super().__init__(problem)
        self.key, self.value, self.problem = key, value, problem
