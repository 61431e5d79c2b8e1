"""The module's tensors as a checkpoint sees them: what a save writes and where a load puts them.

At stages 0-2 that is `module.state_dict()`. At stage 3 a checkpoint save writes into the
module file only what no fp32 master holds (buffers, frozen parameters: gathered unit by
unit) and records which tensors the master pieces stand for; a load into a stage-3 module
copies into each rank's shard just its own chunk of every parameter, with no gather.
`rank0_module_tensors` still gathers every full value (`save_16bit_model`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

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


def _split(state: dict, exclude: set[str], clone: bool,
           parameters: frozenset[str] | set[str] = frozenset()) -> tuple[dict[str, torch.Tensor], dict, dict[str, str]]:
    """(tensors, extra, ties) of `state`; a clone of a name in `parameters` may be deferred (an
    async save copies it before the next optimizer step), anything else (buffers) is copied now."""
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
        tensors[name] = stage(value, now=name not in parameters) if clone else value
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


@dataclass
class ModuleSnapshot:
    """Rank 0's view of the module for one checkpoint."""

    tensors: dict[str, torch.Tensor]  # what the module file holds (tied tensors once)
    extra: dict  # non-tensor extra state
    ties: dict[str, str]  # tied name -> the name it is stored under
    specs: dict[str, dict]  # every state-dict name (ties too) -> {"shape", "dtype"}, in state-dict order
    in_shards: dict[str, str] = field(default_factory=dict)  # name -> parameter name of its master pieces


def _spec(shape, dtype: torch.dtype) -> dict:
    return {"shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}


def _specs(tensors: dict[str, torch.Tensor], ties: dict[str, str], order) -> dict[str, dict]:
    specs = {}
    for name in order:
        first = ties.get(name, name)
        if first in tensors:
            specs[name] = _spec(tensors[first].shape, tensors[first].dtype)
    return specs


def rank0_module_snapshot(
    module: torch.nn.Module, masters: dict[int, str], exclude: set[str] = frozenset(), clone: bool = False,
    writer: bool | None = None,
) -> ModuleSnapshot | None:
    """The module's part of a checkpoint on rank 0 (None on other ranks); every rank must call it.

    `masters` maps `id(param)` to the name of its fp32 master pieces for every stage-3
    parameter an optimizer steps, identically on every rank (`master_param_names`). Those
    are not gathered: their values are in the shards. The units holding any other
    parameter (frozen ones) are gathered one at a time and rank 0 keeps CPU copies of just
    those parameters. At stages 0-2 this is `module_tensors` (everything in the file).
    `writer` says whether this rank writes a module file (default: rank 0; a pipeline
    engine's first data-parallel rank of every stage writes that stage's module).
    """
    rank0 = comm.get_rank() == 0 if writer is None else writer
    if not is_partitioned(module):
        if not rank0:
            return None
        state = module.state_dict()
        parameters = {name for name, _ in module.named_parameters(remove_duplicate=False)}
        tensors, extra, ties = _split(state, set(exclude), clone, parameters)
        return ModuleSnapshot(tensors, extra, ties, _specs(tensors, ties, state))
    state = raw_state_dict(module, keep_vars=True)
    partitioned: dict[int, str] = {}  # id(param) -> its first state-dict name
    ties: dict[str, str] = {}
    in_shards: dict[str, str] = {}
    for name, value in state.items():
        if name in exclude or not hasattr(value, "ds_tensor"):
            continue
        if id(value) in partitioned:
            ties[name] = partitioned[id(value)]
        else:
            partitioned[id(value)] = name
            if id(value) in masters:
                in_shards[name] = masters[id(value)]
    gathered = _gather_to_rank0(module, {key: name for key, name in partitioned.items() if key not in masters}, clone)
    if not rank0:
        return None
    rest = {name: value for name, value in state.items() if not hasattr(value, "ds_tensor")}
    tensors, extra, buffer_ties = _split(rest, set(exclude), clone)
    tensors.update(gathered)
    ties.update(buffer_ties)
    specs = {}
    for name, value in state.items():
        first = ties.get(name, name)
        if first in in_shards:
            specs[name] = _spec(value.ds_shape, value.dtype)
        elif first in tensors:
            specs[name] = _spec(tensors[first].shape, tensors[first].dtype)
    ordered = {name: tensors[name] for name in state if name in tensors}
    return ModuleSnapshot(ordered, extra, ties, specs, in_shards)


def _gather_to_rank0(module: torch.nn.Module, wanted: dict[int, str], clone: bool) -> dict[str, torch.Tensor]:
    """CPU copies on rank 0 of the parameters `wanted` (id -> name), gathering only their units."""
    from zerospeed.zero import GatheredParameters
    from zerospeed.zero.stage3.state_dict import units_in

    rank0 = comm.get_rank() == 0
    copies: dict[str, torch.Tensor] = {}
    for unit in units_in(module):  # the same order and the same units on every rank: gathers are collectives
        members = [p for p in unit.params if id(p) in wanted]
        if not members:
            continue
        with GatheredParameters(members):
            if rank0:
                for param in members:  # copies: the gather buffer is freed on exit
                    value = param.data.detach()
                    copies[wanted[id(param)]] = stage(value) if clone else value.to("cpu", copy=True)
    return copies


def load_partitioned(module: torch.nn.Module, source, filled_by_masters: set[int]) -> None:
    """Load a checkpoint's module tensors into a stage-3 `module` without any collective.

    Each rank copies into its shard just its own chunk of every partitioned parameter
    (`source.flat_range`: a range of the module file, or of the fp32 master pieces cast to
    the shard's dtype), except those in `filled_by_masters` (ids of parameters whose pieces
    this rank's masters load next). Buffers go through `load_state_dict`. Parameters the
    checkpoint lacks keep their values (strictness is checked before loading). Units that
    stay gathered must be re-gathered afterwards (`sync_working_from_master` does it).
    """
    from zerospeed.zero.stage3.state_dict import shard_for_update

    available = set(source.names())
    params: dict[int, tuple[torch.nn.Parameter, list[str]]] = {}
    buffers: dict[str, torch.Tensor] = {}
    for name, value in raw_state_dict(module, keep_vars=True).items():
        if hasattr(value, "ds_tensor"):
            params.setdefault(id(value), (value, []))[1].append(name)
        elif isinstance(value, torch.Tensor) and name in available:
            buffers[name] = source.full(name)
    wanted: dict[int, tuple[object, list[tuple[int, str]]]] = {}  # id(unit) -> (unit, [(member index, name)])
    for key, (param, names) in params.items():
        name = next((n for n in names if n in available), None)
        if key in filled_by_masters or name is None:
            continue
        unit = param._zs_unit
        index = next(i for i, member in enumerate(unit.params) if member is param)
        wanted.setdefault(id(unit), (unit, []))[1].append((index, name))
    with torch.no_grad():
        for unit, members in wanted.values():  # one unit's values at a time
            with shard_for_update(unit) as shard:
                for index, name in members:
                    start, end = unit.layout.logical_range(index, unit.rank)
                    offset = unit.layout.offsets[index]
                    if end > start:
                        shard[offset : offset + end - start].copy_(source.flat_range(name, start, end))
        if buffers:
            module.load_state_dict(buffers, strict=False)
