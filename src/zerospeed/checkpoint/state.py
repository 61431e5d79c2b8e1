"""The module's tensors as a checkpoint sees them: whole (gathered at stage 3), detached, contiguous."""

from __future__ import annotations

import contextlib

import torch


def gathered_module(module: torch.nn.Module, modify: bool = False) -> contextlib.AbstractContextManager:
    """Make every stage-3 partitioned parameter whole inside the block (a no-op at stages 0-2).

    Stage-3 parameters have empty `.data` outside a gather; every rank must enter the block.
    With `modify`, rank 0's values are partitioned back on exit.
    """
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_tensor")]
    if not partitioned:
        return contextlib.nullcontext()
    from zerospeed.zero import GatheredParameters

    return GatheredParameters(partitioned, modifier_rank=0 if modify else None)


def module_tensors(
    module: torch.nn.Module, exclude: set[str] = frozenset(), clone: bool = False,
) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    """(tensors, non-tensor extra state, ties) of `module.state_dict()`, minus `exclude`.

    A tensor that is the same storage as an earlier one (a tied embedding / LM head) is
    stored once: `ties` maps its name to the first name. Parameters are views into flat
    ZeRO buckets: `clone` copies just their elements (a torch.save of a view would pickle
    the whole bucket); without it the views are returned and must be written before the
    next step.
    """
    tensors, extra, ties = {}, {}, {}
    seen: dict[tuple, str] = {}
    for name, value in module.state_dict().items():
        if name in exclude:
            continue
        if not isinstance(value, torch.Tensor):
            extra[name] = value
            continue
        value = value.detach()
        identity = (value.data_ptr(), value.dtype, tuple(value.shape), tuple(value.stride()))
        if value.numel() and identity in seen:
            ties[name] = seen[identity]
            continue
        seen[identity] = name
        tensors[name] = value.to("cpu", copy=True).contiguous() if clone else value
    return tensors, extra, ties
