"""Base model and value types shared by every config section.

DeepSpeed's JSON is loose (5e8 arrives as a float, typos pass silently); our sections are
strict: integers accept integral floats but never booleans, booleans are only true/false,
unknown keys fail with a did-you-mean, and everything is frozen after validation so that
nothing downstream can change a config behind the engine's back.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, ClassVar, Iterable, Literal, Optional, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import Annotated

from .messages import BAD_VALUE, UNKNOWN_KEY, did_you_mean, warn

AUTO = "auto"


class _AutoOk:
    """Marker in a field's metadata: the string "auto" is a real value of this field."""

    def __repr__(self) -> str:
        return "AUTO_OK"


AUTO_OK = _AutoOk()


class _AutoPending:
    """Marker: "auto" is a placeholder that `resolved()` must replace (batch sizes)."""

    def __repr__(self) -> str:
        return "AUTO_PENDING"


AUTO_PENDING = _AutoPending()


def _kind_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def to_int(value: Any) -> int:
    """JSON writes 5e8 as a float: accept integral floats, refuse booleans and strings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an integer, got {_kind_name(value)}")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError("expected an integer, got a non-integral number")
        return int(value)
    return value


def to_float(value: Any) -> float:
    """Any JSON number is a float here; booleans and strings are mistakes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_kind_name(value)}")
    return float(value)


def to_bool(value: Any) -> bool:
    """Only true/false: 1 or "yes" would hide a typo in a numeric key."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_kind_name(value)}")
    return value


def _check_range(value: float, ge=None, gt=None, le=None, lt=None) -> None:
    for bound, ok, sign in ((ge, lambda b: value >= b, ">="), (gt, lambda b: value > b, ">"),
                            (le, lambda b: value <= b, "<="), (lt, lambda b: value < b, "<")):
        if bound is not None and not ok(bound):
            raise ValueError(f"must be {sign} {bound}")


def _scalar(convert: Callable[[Any], Any], core: Any, *, optional: bool, auto: bool, **bounds: Any) -> Any:
    """Annotated type running one validator for the whole (value | None | "auto") union.

    One validator keeps error messages to one line instead of pydantic's one per branch.
    """

    def validate(value: Any) -> Any:
        if value is None and optional:
            return None
        if auto and value == AUTO:
            return AUTO
        out = convert(value)
        _check_range(out, **bounds)
        return out

    kinds: list[Any] = [core]
    if auto:
        kinds.append(Literal["auto"])
    if optional:
        kinds.append(type(None))
    annotation = Union[tuple(kinds)] if len(kinds) > 1 else core
    extras = [BeforeValidator(validate)] + ([AUTO_PENDING] if auto else [])
    return Annotated[(annotation, *extras)]


def Int(*, optional: bool = False, auto: bool = False, **bounds: Any) -> Any:  # noqa: N802 - a type
    """Integer field type; bounds are ge/gt/le/lt."""
    return _scalar(to_int, int, optional=optional, auto=auto, **bounds)


def Float(*, optional: bool = False, auto: bool = False, **bounds: Any) -> Any:  # noqa: N802
    """Float field type; bounds are ge/gt/le/lt."""
    return _scalar(to_float, float, optional=optional, auto=auto, **bounds)


Bool = Annotated[bool, BeforeValidator(to_bool)]
OptBool = Annotated[Optional[bool], BeforeValidator(lambda v: None if v is None else to_bool(v))]


def Choice(*allowed: str, optional: bool = False, case: str | None = "lower") -> Any:  # noqa: N802
    """A string from a fixed set, matched case-insensitively and stored in `case`."""

    def validate(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected one of {list(allowed)}, got {_kind_name(value)}")
        for option in allowed:
            if option.lower() == value.lower():
                return option if case is None else (option.lower() if case == "lower" else option.upper())
        raise ValueError(f"not allowed{did_you_mean(value, allowed)}; allowed: {list(allowed)}")

    core = Optional[str] if optional else str
    extras = [BeforeValidator(validate)] + ([AUTO_OK] if "auto" in allowed else [])
    return Annotated[(core, *extras)]


class FrozenDict(dict):
    """A dict that refuses mutation: free-form sub-sections stay as immutable as the model."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("config values are read-only; build a new config instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only  # type: ignore

    def __reduce__(self) -> Any:
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo: dict) -> "FrozenDict":
        return FrozenDict({k: copy.deepcopy(v, memo) for k, v in self.items()})


def freeze(value: Any) -> Any:
    """Recursively turn dicts into FrozenDicts and lists into tuples."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def _dict_only(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object {{...}}, got {_kind_name(value)}")
    return value


# a free-form object whose inner keys belong to a feature we do not interpret (yet)
FreeDict = Annotated[dict, BeforeValidator(_dict_only), AfterValidator(freeze)]
StrList = Annotated[tuple, BeforeValidator(lambda v: [v] if isinstance(v, str) else v),
                    AfterValidator(lambda v: tuple(str(x) for x in v))]


def bad_value(value: Any, problem: str, sub: str = "") -> PydanticCustomError:
    """Error for a model-level check; `sub` is the key below the model's own path."""
    return PydanticCustomError(BAD_VALUE, "{problem}", {"problem": problem, "value": value, "sub": sub})


class ConfigModel(BaseModel):
    """One config section: frozen, unknown keys refused, aliases migrated with a warning.

    Subclasses list `aliases` (old or alternative key -> field name) and `deprecated`
    (old key -> note); a key in `deprecated` warns when used. `migrate()` handles
    deprecations that are more than a rename (cpu_offload: true -> offload_optimizer).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(),
                              arbitrary_types_allowed=True, validate_default=False)

    aliases: ClassVar[dict[str, str]] = {}
    deprecated: ClassVar[dict[str, str]] = {}
    section: ClassVar[str] = ""

    @classmethod
    def migrate(cls, data: dict) -> dict:
        return data

    @classmethod
    def known_keys(cls) -> list[str]:
        return sorted(set(cls.model_fields) | set(cls.aliases))

    @model_validator(mode="before")
    @classmethod
    def _normalise_keys(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, BaseModel):
            return data
        if not isinstance(data, dict):
            raise bad_value(data, f"expected an object {{...}}, got {_kind_name(data)}")
        data = cls.migrate(dict(data))
        for alias, canonical in cls.aliases.items():
            if alias not in data:
                continue
            value = data.pop(alias)
            if canonical in data and data[canonical] != value:
                raise bad_value(value, f"conflicts with '{canonical}' = {data[canonical]!r}; give only one",
                                sub=alias)
            data.setdefault(canonical, value)
            if alias in cls.deprecated:
                where = f"{cls.section}." if cls.section else ""
                note = cls.deprecated[alias]
                warn(f"config key '{where}{alias}' is deprecated, use '{where}{canonical}' instead"
                     + (f". {note}" if note else ""))
        for key in data:
            if key not in cls.model_fields:
                raise PydanticCustomError(UNKNOWN_KEY, "unknown key {key}", {"key": key, "known": cls.known_keys()})
        return data

    def to_dict(self) -> dict[str, Any]:
        """Effective values as plain JSON-able data (what checkpoints store)."""
        return self.model_dump(mode="json")


def accepts_auto(annotation: Any, metadata: Iterable[Any] = ()) -> bool:
    """Whether the field keeps the string "auto" as its value (genuine or pending)."""
    if any(m is AUTO_PENDING for m in metadata):
        return True
    return genuine_auto(annotation, metadata)


def genuine_auto(annotation: Any, metadata: Iterable[Any] = ()) -> bool:
    """Whether "auto" is a real value of the field (pipeline.stages), not a placeholder."""
    if any(m is AUTO_PENDING for m in metadata):
        return False
    if any(m is AUTO_OK for m in metadata):
        return True
    if annotation is str:
        return True
    if get_origin(annotation) is Annotated:
        args = get_args(annotation)
        return genuine_auto(args[0], args[1:])
    if get_origin(annotation) is Literal:
        return AUTO in get_args(annotation)
    return any(genuine_auto(a) for a in get_args(annotation)) if get_origin(annotation) is Union else False


def section_model(annotation: Any) -> type[ConfigModel] | None:
    """The ConfigModel class inside a field annotation (Optional[Model] -> Model)."""
    if isinstance(annotation, type) and issubclass(annotation, ConfigModel):
        return annotation
    for arg in get_args(annotation):
        found = section_model(arg)
        if found is not None:
            return found
    return None
