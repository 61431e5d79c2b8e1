"""The module's tensors as a checkpoint sees them: whole (gathered at stage 3), detached, contiguous."""

from __future__ import annotations

import contextlib

import torch

from zerospeed import comm
from zerospeed.checkpoint.snapshot_buffers import stage


def is_partitioned(module: torch.nn.Module) -> bool:
    """True when `module` holds ZeRO stage-3 parameters (empty `.data` outside a gather)."""
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


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


def raw_state_dict(module: torch.nn.Module, keep_vars: bool = False) -> dict:
    """`module.state_dict()` without stage 3's guard against partitioned (empty) parameters.

    Use it for names and `ds_shape`s only: a partitioned parameter's value here is empty.
    """
    if not is_partitioned(module):
        return module.state_dict(keep_vars=keep_vars)
    from zerospeed.zero.stage3.state_dict import _guard_bypassed

    with _guard_bypassed():
        return module.state_dict(keep_vars=keep_vars)


def _split(state: dict, exclude: set[str], clone: bool) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    tensors, extra, ties = {}, {}, {}
    seen: dict[tuple, str] = {}
    for name, value in state.items():
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
        tensors[name] = stage(value) if clone else value
    return tensors, extra, ties


def module_tensors(
    module: torch.nn.Module, exclude: set[str] = frozenset(), clone: bool = False,
) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    """(tensors, non-tensor extra state, ties) of `module.state_dict()`, minus `exclude`.

    A tensor that is the same storage as an earlier one (a tied embedding / LM head) is
    stored once: `ties` maps its name to the first name. Parameters are views into flat
    ZeRO buckets: `clone` copies just their elements (a torch.save of a view would pickle
    the whole bucket); without it the views are returned and must be written before the
    next step. A stage-3 module must be gathered around the call (see `rank0_module_tensors`).
    """
    return _split(module.state_dict(), set(exclude), clone)


def rank0_module_tensors(
    module: torch.nn.Module, exclude: set[str] = frozenset(), clone: bool = False,
) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]] | None:
    """`module_tensors` on rank 0 (None on other ranks); every rank must call it.

    At stage 3 the full values are gathered one unit at a time and copied to CPU on rank 0
    (peak: the copies plus one gathered unit), so the result never holds an empty
    placeholder nor a view of a gather buffer that is freed (or refilled) after the call.
    Tied parameters are one `Parameter`, hence one copy, and are still found as ties.
    """
    rank0 = comm.get_rank() == 0
    if not is_partitioned(module):
        return module_tensors(module, exclude, clone) if rank0 else None
    from zerospeed.zero import GatheredParameters
    from zerospeed.zero.stage3.state_dict import units_in

    full: dict[int, torch.Tensor] = {}
    for unit in units_in(module):  # the same order on every rank: the gathers are collectives
        with GatheredParameters(unit.params):
            if rank0:
                for param in unit.params:
                    full[id(param)] = param.data.detach().to("cpu", copy=True)
    if not rank0:
        return None
    state = {}
    for name, value in raw_state_dict(module, keep_vars=True).items():
        if isinstance(value, torch.Tensor) and id(value) not in full:  # buffers: copied once each
            full[id(value)] = value.detach().to("cpu", copy=True).contiguous()
        state[name] = full[id(value)] if isinstance(value, torch.Tensor) else value
    return _split(state, set(exclude), clone=False)
