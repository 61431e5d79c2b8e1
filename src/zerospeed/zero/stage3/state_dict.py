"""Full weights out of a stage-3 model: never a `torch.Size([0])` placeholder.

`module.state_dict()` on a partitioned module raises (naming the parameter and the fix)
unless its parameters are gathered, e.g. inside `GatheredParameters`.
`gather_full_state_dict(module)` is the collective way to get every full tensor: it
gathers one unit at a time, copies its values, and releases it again, so the peak is
the result plus one unit.

Checkpoints read and write shards without gathering: `master_param_names` says which
parameters an optimizer's fp32 masters hold (a save need not gather those),
`shard_for_update` lets a load write this rank's chunks in place, and `refresh_gathered`
re-gathers the units that stay gathered afterwards.
"""

from __future__ import annotations

import contextlib

import torch

from zerospeed.errors import EngineError
from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus, unit_of

_GUARD_ATTR = "_zs_state_dict_guarded"
_bypass = 0


@contextlib.contextmanager
def _guard_bypassed():
    global _bypass
    _bypass += 1
    try:
        yield
    finally:
        _bypass -= 1


def _released(module: torch.nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters(recurse=False)
            if getattr(p, "ds_status", None) is ZeroParamStatus.NOT_AVAILABLE]


def _message(module: torch.nn.Module, names: list[str], what: str) -> str:
    return (
        f"{what} of a ZeRO stage-3 model: parameter '{names[0]}' of module {type(module).__name__} is partitioned "
        f"(this rank holds only param.ds_tensor; param.data is empty). To get full weights call, on every rank, "
        f"`zerospeed.zero.stage3.gather_full_state_dict(model)` or `engine.save_16bit_model(dir)`, or wrap the call "
        f"in `with zerospeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):` (the modifier rank "
        f"is needed when loading)"
    )


def _state_dict_pre_hook(module, prefix, keep_vars):
    if not _bypass:
        released = _released(module)
        if released:
            raise EngineError(_message(module, [prefix + n for n in released], "state_dict()"))


def _load_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    released = _released(module)
    if released and any(prefix + n in state_dict for n in released):
        raise EngineError(_message(module, [prefix + n for n in released], "load_state_dict()"))


def guard_state_dict(module: torch.nn.Module) -> None:
    """Make state_dict()/load_state_dict() on `module` refuse partitioned parameters (idempotent)."""
    if module.__dict__.get(_GUARD_ATTR):
        return
    module.__dict__[_GUARD_ATTR] = True
    module.register_state_dict_pre_hook(_state_dict_pre_hook)
    module.register_load_state_dict_pre_hook(_load_pre_hook)


def units_in(module: torch.nn.Module) -> list[ParamUnit]:
    """The units holding `module`'s parameters, in a rank-independent order (by ds_id)."""
    units: dict[int, ParamUnit] = {}
    for param in module.parameters():
        unit = unit_of(param)
        if unit is not None:
            units.setdefault(id(unit), unit)
    return sorted(units.values(), key=lambda u: min(p.ds_id for p in u.params))


def gather_full_state_dict(module: torch.nn.Module, dtype: torch.dtype | None = None,
                           rank0_only: bool = False) -> dict[str, torch.Tensor]:
    """Every rank must call it. The module's state dict with full tensors (cast to `dtype` if given).

    With `rank0_only=True` ranks other than 0 take part in the gathers but return {}.
    """
    from zerospeed import comm

    keep = not rank0_only or comm.get_rank() == 0
    full: dict[int, torch.Tensor] = {}
    for unit in units_in(module):
        was_available = unit.status is ZeroParamStatus.AVAILABLE
        unit.fetch()
        if keep:
            for param in unit.params:
                full[id(param)] = param.data.detach().to(dtype or param.dtype, copy=True)
        if not was_available:
            unit.release()
    if not keep:
        return {}
    with _guard_bypassed():
        raw = module.state_dict(keep_vars=True)
    out = {}
    for key, value in raw.items():
        if id(value) in full:
            out[key] = full[id(value)]
        else:
            tensor = value.detach()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            out[key] = tensor.clone()
    return out


def master_param_names(optimizer) -> dict[int, str]:
    """`id(param)` -> the name its fp32 master pieces are saved under, for every parameter the
    stage-3 `optimizer` steps.

    The same on every rank, also for a parameter so small that some ranks hold none of its
    elements (and so no piece): the ranks decide alike, without a collective, which units a
    checkpoint save still has to gather.
    """
    names: dict[int, str] = {}
    for state in getattr(getattr(optimizer, "reducer", None), "states", ()):
        for index in state.trainable:
            names[id(state.unit.params[index])] = state.unit.names[index]
    return names


@contextlib.contextmanager
def shard_for_update(unit: ParamUnit):
    """`unit.shard` in memory and writable inside the block; on exit it is stored (swapped back
    out to NVMe if it lives there) and the unit's fp32 master refreshed from it. No collective:
    units still gathered (persistent ones) need `refresh_gathered` afterwards."""
    from zerospeed.zero.offload.nvme_params import SwappedParamUnit

    swapped = isinstance(unit, SwappedParamUnit)
    if swapped:
        unit.tier.swap_in(unit)
    try:
        yield unit.shard
        if swapped:
            unit.tier.store(unit, unit.shard)
    finally:
        if swapped:
            unit.tier.release(unit)
    if unit.on_shard_written is not None:
        unit.on_shard_written()


def refresh_gathered(module: torch.nn.Module) -> None:
    """Re-gather every unit of `module` that is gathered (persistent or held), after its shard
    changed. A collective: every rank calls it (the gathered units are the same on every rank)."""
    for unit in units_in(module):
        unit.refresh()
