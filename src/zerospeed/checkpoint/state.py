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
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, non-tensor extra state) of `module.state_dict()`, minus `exclude`.

    Parameters are views into flat ZeRO buckets: `clone` copies just their elements (a
    torch.save of a view would pickle the whole bucket); without it the views are
    returned and must be written before the next step.
    """
    tensors, extra = {}, {}
    for name, value in module.state_dict().items():
        if name in exclude:
            continue
        if isinstance(value, torch.Tensor):
            value = value.detach()
            tensors[name] = value.to("cpu", copy=True).contiguous() if clone else value
        else:
            extra[name] = value
    return tensors, extra
