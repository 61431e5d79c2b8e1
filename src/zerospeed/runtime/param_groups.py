"""Normalise what users pass as `model_parameters` (or a client optimizer) into param groups."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from zerospeed.errors import ConfigError
from zerospeed.utils.logging import warn_once


def normalize_param_groups(source: Iterable[Any] | None, module: torch.nn.Module) -> list[dict]:
    """List of {"params": [...], **options}: trainable, each parameter once.

    Accepts None (all module parameters), an iterable of parameters, an iterable of
    dicts (torch param groups), or (name, parameter) pairs. Frozen parameters are dropped:
    they need neither gradients nor optimizer state.
    """
    items = list(module.parameters() if source is None else source)
    if items and all(isinstance(item, dict) for item in items):
        groups = [dict(item, params=list(item["params"])) for item in items]
    elif items and all(isinstance(item, tuple) and len(item) == 2 for item in items):
        groups = [{"params": [param for _, param in items]}]
    else:
        groups = [{"params": items}]
    seen: set[int] = set()
    for index, group in enumerate(groups):
        kept = []
        for param in group["params"]:
            if not isinstance(param, torch.Tensor):
                raise ConfigError(
                    f"model_parameters group {index} holds a {type(param).__name__}, not a tensor; "
                    "pass model.parameters() or a list of {'params': [...]} dicts"
                )
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            kept.append(param)
        group["params"] = kept
    in_module = {id(p) for p in module.parameters()}
    stray = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in seen]
    if stray and source is not None:
        warn_once(
            f"{len(stray)} trainable module parameters are not in model_parameters (first: {stray[0]}); "
            "they get no optimizer step and their gradients are not reduced"
        )
    external = sum(1 for g in groups for p in g["params"] if id(p) not in in_module)
    if external:
        warn_once(f"{external} optimized parameters are not registered in the model")
    return groups
