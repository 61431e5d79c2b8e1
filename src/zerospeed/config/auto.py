"""Hugging Face style "auto" values: found before validation, filled in by `resolved()`.

Three kinds of "auto":
- pending: batch sizes and optimizer/scheduler params. They stay "auto" in the model and
  `resolved()` must fill them (batch sizes may also be derived from the other two).
- defaulted: any other key (bucket sizes, thresholds, fp16.enabled, gradient_clipping...).
  DeepSpeed's own models drop such keys, so the key takes DeepSpeed's default (logged);
  `auto_values` can still set it in `resolved()`.
- genuine: keys where "auto" is a real value (pipeline.stages); left alone.
"""

from __future__ import annotations

from typing import Any

from ._base import AUTO, ConfigModel, accepts_auto, genuine_auto, section_model
from .messages import join_path

PARAM_SECTIONS = ("optimizer", "scheduler")


def find_autos(model: type[ConfigModel], data: dict, prefix: str = "",
               raw_prefix: tuple = ()) -> tuple[dict, dict[str, tuple]]:
    """Copy of `data` without defaulted autos, and {canonical dotted path: raw key path} of autos."""
    out = dict(data)
    found: dict[str, tuple] = {}
    for key, value in data.items():
        name = model.aliases.get(key, key)
        field = model.model_fields.get(name)
        if field is None:
            continue  # unknown key: validation reports it with a did-you-mean
        path, raw_path = join_path(prefix, name), raw_prefix + (key,)
        if isinstance(value, str) and value == AUTO:
            if not genuine_auto(field.annotation, field.metadata):
                found[path] = raw_path
                if not accepts_auto(field.annotation, field.metadata):
                    del out[key]
        elif isinstance(value, dict):
            sub = section_model(field.annotation)
            if sub is not None:
                out[key], sub_found = find_autos(sub, value, path, raw_path)
                found.update(sub_found)
            elif name == "params" and prefix in PARAM_SECTIONS:
                found.update({join_path(path, k): raw_path + (k,) for k, v in value.items()
                              if isinstance(v, str) and v == AUTO})
    return out, found


def is_pending(path: str) -> bool:
    """Autos that have no default and must be resolved (params), batch sizes aside."""
    return path.split(".")[0] in PARAM_SECTIONS


def set_path(data: dict, raw_path: tuple, value: Any) -> None:
    for key in raw_path[:-1]:
        data = data[key]
    data[raw_path[-1]] = value


def get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj
