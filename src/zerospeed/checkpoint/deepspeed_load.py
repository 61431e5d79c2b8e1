"""`engine.load_checkpoint` for directories DeepSpeed wrote: module, fp32 masters, Adam state, scheduler, counters.

Like `loader`, in two phases. *Plan* (every rank, nothing changes): read the tag directory
(`deepspeed_format`), check the module's names and shapes, find for every piece this rank's
optimizer owns the DeepSpeed fragments that fill it, and check that the optimizer state
maps onto ours (Adam's `exp_avg`, `exp_avg_sq`, `step`) and the scheduler's onto ours.
The ranks agree (`loader.agree`): any problem raises the same CheckpointError everywhere.
*Apply*: load the module, copy masters and states into the pieces, refresh the model
from the masters, then scaler, counters, scheduler.
What is loaded follows DeepSpeed's `load_checkpoint` flags, at any world size and stage.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field

import torch

from zerospeed import comm
from zerospeed.checkpoint import loader
from zerospeed.checkpoint.deepspeed_format import (ADAM_STATE_KEYS, DeepSpeedCheckpoint, module_state,
                                                   read_checkpoint)
from zerospeed.checkpoint.loader import Options
from zerospeed.checkpoint.saver import wait_for_pending
from zerospeed.checkpoint.state import gathered_module, raw_state_dict
from zerospeed.checkpoint.universal import Copy, missing_ranges, plan_copies
from zerospeed.errors import CheckpointError
from zerospeed.utils.logging import log_dist

# Keys of DeepSpeed's checkpoint that `load_checkpoint` consumes; the rest is returned as client_state.
DEEPSPEED_STATES = ("module", "skipped_steps", "global_steps", "dp_world_size", "mp_world_size", "data_sampler",
                    "random_ltd")
# Param-group keys that say how this process runs the optimizer, not what it computes: kept as they are.
IMPLEMENTATION_KEYS = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})
MAX_LISTED = 12


@dataclass
class PieceLoad:
    """One piece this rank's optimizer owns, the fragment copies that fill it, and its state keys' kinds."""

    piece: object  # LogicalPiece
    copies: list[Copy]
    kinds: dict[str, str]  # optimizer state key -> "elementwise" | "scalar"


@dataclass
class Plan:
    checkpoint: DeepSpeedCheckpoint
    module: dict[str, torch.Tensor]
    pieces: list[PieceLoad] = field(default_factory=list)
    masters_from_module: bool = False  # no fp32 copies in the checkpoint: masters come from the loaded module
    client_state: dict = field(default_factory=dict)
    load_path: str = ""


def _listed(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def trainable_by_group(engine) -> list[list[tuple[str, tuple]]] | None:
    """Per param group, (name, shape) of its parameters in module order, over all ranks (a collective).

    DeepSpeed's stage-0 files number optimizer state by position in the param groups; this is
    the naming that position means, assuming groups list parameters in module order.
    """
    optimizer = engine.optimizer
    if optimizer is None:
        return None
    group_of = {id(t): g for g, group in enumerate(optimizer.param_groups) for t in group["params"]}
    found = {p.name: (group_of.get(id(p.tensor), 0), tuple(p.shape)) for p in optimizer.logical_pieces()}
    if comm.get_world_size() > 1:
        everyone = [None] * comm.get_world_size()
        comm.all_gather_object(everyone, found)
        for other in everyone:
            found.update(other)
    groups: list[list[tuple[str, tuple]]] = [[] for _ in optimizer.param_groups]
    seen: set[str] = set()
    for names in parameter_aliases(engine.module).values():
        name = next((n for n in names if n in found), None)
        if name is not None and names[0] not in seen:
            seen.add(names[0])
            groups[found[name][0]].append((name, found[name][1]))
    return groups


def parameter_aliases(module: torch.nn.Module) -> dict[str, list[str]]:
    """Every parameter name -> all names of that Parameter in module order (a tied head and embedding
    are one Parameter: DeepSpeed names it by the first name, our optimizer pieces may use another)."""
    by_param: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(param), []).append(name)
    return {name: names for names in by_param.values() for name in names}


def _saved_name(name: str, aliases: dict[str, list[str]], ckpt: DeepSpeedCheckpoint) -> str | None:
    return next((n for n in aliases.get(name, [name]) if n in ckpt.shapes), None)


# -- plan -----------------------------------------------------------------------------------
def _check_module(state: dict, module: torch.nn.Module, strict: bool, where: str) -> None:
    saved = {name: tuple(value.shape) for name, value in state.items() if isinstance(value, torch.Tensor)}
    own = {name: tuple(getattr(value, "ds_shape", value.shape))
           for name, value in raw_state_dict(module, keep_vars=True).items() if isinstance(value, torch.Tensor)}
    wrong = [f"{n}: checkpoint {saved[n]} vs model {own[n]}" for n in saved.keys() & own.keys() if saved[n] != own[n]]
    if wrong:
        raise CheckpointError(f"{where}: shapes differ for {len(wrong)} tensors: {_listed(wrong)}")
    missing, unexpected = own.keys() - saved.keys(), saved.keys() - own.keys()
    if strict and (missing or unexpected):
        parts = [f"missing from the checkpoint ({len(missing)}): {_listed(missing)}"] if missing else []
        parts += [f"not in the model ({len(unexpected)}): {_listed(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{where}: the model and the checkpoint differ: {'; '.join(parts)}; "
                              "pass load_module_strict=False to load the tensors they share")


def _state_kinds(ckpt: DeepSpeedCheckpoint, source_index: int) -> dict[str, str]:
    source = ckpt.sources[source_index]
    kinds = {}
    for key, value in source.state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source.file}: optimizer state {key!r} is a {type(value).__name__}, not a tensor")
        if value.dim() == 0:
            kinds[key] = "scalar"
        elif value.numel() >= source.fp32.numel():
            kinds[key] = "elementwise"
        else:
            raise CheckpointError(f"{source.file}: optimizer state {key!r} has {value.numel()} elements for "
                                  f"{source.fp32.numel()} fp32 weights")
    return kinds


def _check_optimizer_state(ckpt: DeepSpeedCheckpoint, optimizer, where: str) -> None:
    inner = optimizer.optimizer
    for source in ckpt.sources:
        unknown = set(source.state) - ADAM_STATE_KEYS
        if unknown:
            raise CheckpointError(f"{source.file}: optimizer state keys {sorted(unknown)} are not Adam's "
                                  f"({', '.join(sorted(ADAM_STATE_KEYS))}); zerospeed maps only Adam/AdamW state. "
                                  "Pass load_optimizer_states=False to load the weights alone")
        if source.state and not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            raise CheckpointError(f"{source.file} holds Adam state, this engine's optimizer is "
                                  f"{type(inner).__name__}; pass load_optimizer_states=False to load the weights alone")
    if ckpt.param_groups is not None and len(ckpt.param_groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{where}: the checkpoint's optimizer has {len(ckpt.param_groups)} param groups, this "
                              f"one {len(optimizer.param_groups)}; pass load_optimizer_states=False to load the "
                              "weights alone")


def _plan_pieces(ckpt: DeepSpeedCheckpoint, optimizer, aliases: dict[str, list[str]], options: Options,
                 where: str) -> list[PieceLoad]:
    group_of = {id(t): g for g, group in enumerate(optimizer.param_groups) for t in group["params"]}
    loads, missing = [], []
    for piece in optimizer.logical_pieces():
        name = _saved_name(piece.name, aliases, ckpt)
        if name is None:
            missing.append(piece.name)
            continue
        if tuple(ckpt.shapes[name]) != tuple(piece.shape):
            raise CheckpointError(f"{where}: parameter {name} has shape {tuple(ckpt.shapes[name])} in "
                                  f"the checkpoint, {tuple(piece.shape)} in the model")
        group = group_of.get(id(piece.tensor), 0)
        if options.optimizer_states and ckpt.group_of.get(name, group) != group:
            raise CheckpointError(f"{where}: parameter {name} is in param group {ckpt.group_of[name]} "
                                  f"in the checkpoint, group {group} here; pass load_optimizer_states=False to load "
                                  "the weights alone")
        copies = plan_copies(ckpt.saved_pieces(name), piece.start, piece.end)
        gaps = missing_ranges(copies, piece.start, piece.end)
        if gaps:
            raise CheckpointError(f"{where}: elements {gaps} of parameter {piece.name} are in no DeepSpeed partition")
        kinds = _state_kinds(ckpt, copies[0].source.rank) if options.optimizer_states else {}
        loads.append(PieceLoad(piece, copies, kinds))
    if missing and options.strict:
        raise CheckpointError(f"{where}: trainable parameters with no saved fp32 weights ({len(missing)}): "
                              f"{_listed(missing)}; pass load_module_strict=False to keep their current values")
    return loads


def _client_state(ckpt: DeepSpeedCheckpoint, options: Options, engine) -> dict:
    """What DeepSpeed's load_checkpoint returns: the top-level keys it did not consume."""
    rank = comm.get_rank()
    own = ckpt.rank_model_states[rank] if 0 < rank < len(ckpt.rank_model_states) else ckpt.model_state
    consumed = ["module"] if options.module_only else list(DEEPSPEED_STATES)
    consumed += ["lr_scheduler"] if options.lr_scheduler_states else []
    consumed += ["optimizer"] if options.optimizer_states else []
    client = {key: value for key, value in own.items() if key not in consumed}
    stage0_optimizer = engine.optimizer is not None and engine.zero_optimization_stage() == 0
    if options.optimizer_states and not options.module_only and stage0_optimizer and own.get("optimizer") is not None:
        client["optimizer"] = own["optimizer"]  # DeepSpeed hands the non-ZeRO optimizer state back too
    return client


def _check_scheduler(ckpt: DeepSpeedCheckpoint, engine, where: str) -> None:
    saved, scheduler = ckpt.model_state.get("lr_scheduler"), getattr(engine, "lr_scheduler", None)
    if saved is None or scheduler is None:
        return
    own = scheduler.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(own):
        found = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(f"{where}: the saved lr_scheduler state ({found}) does not fit this engine's "
                              f"{type(scheduler).__name__} ({sorted(own)}); pass load_lr_scheduler_states=False")


def make_plan(engine, tag_dir: str, options: Options, trainable) -> Plan:
    ckpt = read_checkpoint(tag_dir, trainable)
    where = f"load_checkpoint({tag_dir})"
    plan = Plan(ckpt, module_state(ckpt), load_path=ckpt.model_file)
    if comm.get_rank() < len(ckpt.rank_model_states) and ckpt.stage == 3:
        plan.load_path = os.path.join(tag_dir, f"zero_pp_rank_{comm.get_rank()}_mp_rank_00_model_states.pt")
    if options.custom_load_fn is None:
        _check_module(plan.module, engine.module, options.strict, where)
    optimizer = engine.optimizer
    if optimizer is not None and not options.module_only:
        if not ckpt.sources:
            if options.optimizer_states:
                raise CheckpointError(f"{where}: the checkpoint holds no optimizer state (saved without an "
                                      "optimizer); pass load_optimizer_states=False or load_module_only=True")
            plan.masters_from_module = True
        else:
            if options.optimizer_states:
                _check_optimizer_state(ckpt, optimizer, where)
            plan.pieces = _plan_pieces(ckpt, optimizer, parameter_aliases(engine.module), options, where)
    if options.lr_scheduler_states and not options.module_only:
        _check_scheduler(ckpt, engine, where)
    plan.client_state = _client_state(ckpt, options, engine)
    return plan


# -- apply ---------------------------------------------------------------------------------
def _fill(ckpt: DeepSpeedCheckpoint, load: PieceLoad, key: str, target: torch.Tensor | None) -> torch.Tensor:
    """The piece's range of fp32 values (`master`) or elementwise state `key`, into `target` (else a new
    tensor like the master: states saved in bf16, as DeepSpeed's CPU Adam can, become fp32 like ours)."""
    if target is None:
        target = torch.empty_like(load.piece.tensor)
    for copy in load.copies:
        values = ckpt.fragment_values(copy.source.index, key)[copy.source_offset : copy.source_offset + copy.length]
        target[copy.target_offset : copy.target_offset + copy.length].copy_(values)
    return target


def _scalar_device(optimizer, tensor: torch.Tensor) -> torch.device:
    """Where torch optimizers keep `step`: on the parameter's device only when fused or capturable."""
    for group in optimizer.param_groups:
        if any(p is tensor for p in group["params"]) and (group.get("fused") or group.get("capturable")):
            return tensor.device
    return torch.device("cpu")


def _load_pieces(engine, plan: Plan, options: Options) -> None:
    optimizer, ckpt = engine.optimizer, plan.checkpoint
    with torch.no_grad():
        for load in plan.pieces:
            _fill(ckpt, load, "master", load.piece.tensor)
            if not options.optimizer_states:
                continue
            state = {}
            for key, kind in load.kinds.items():
                if kind == "elementwise":
                    state[key] = _fill(ckpt, load, key, None)
                else:  # a copy per piece: torch's Adam increments `step` in place
                    source = ckpt.sources[ckpt.fragments[load.copies[0].source.index].source]
                    state[key] = source.state[key].to(_scalar_device(optimizer, load.piece.tensor), copy=True)
            optimizer.state[load.piece.tensor] = state


def _load_module(engine, plan: Plan, options: Options) -> None:
    with gathered_module(engine.module, modify=True):
        if options.custom_load_fn is not None:
            options.custom_load_fn(src=plan.module, dst=engine.module)
        else:
            engine.module.load_state_dict(plan.module, strict=options.strict)


def _load_loss_scale(engine, saved: dict | None) -> None:
    scaler = engine.loss_scaler
    if saved is None or not saved.get("dynamic") or not getattr(scaler, "dynamic", False):
        return  # static or no scaling on either side: the configured scale stands
    state = scaler.state_dict()
    state.update({k: saved[k] for k in state if k in saved})
    scaler.load_state_dict(state)


def apply_plan(engine, plan: Plan, options: Options) -> dict:
    ckpt, optimizer = plan.checkpoint, engine.optimizer
    _load_module(engine, plan, options)
    if options.module_only or plan.masters_from_module:
        if optimizer is not None:
            optimizer.refresh_master_from_working()
        if options.module_only:
            return plan.client_state
    elif optimizer is not None:
        _load_pieces(engine, plan, options)
        if options.optimizer_states and ckpt.param_groups is not None:
            for group, saved in zip(optimizer.param_groups, ckpt.param_groups):
                group.update({k: v for k, v in saved.items() if k in group and k not in IMPLEMENTATION_KEYS})
        optimizer.sync_working_from_master()
    if options.optimizer_states:
        _load_loss_scale(engine, ckpt.loss_scaler)
    saved = ckpt.model_state
    engine.global_steps = int(saved["global_steps"])
    engine.global_samples = int(saved.get("global_samples", engine.global_steps * engine.train_batch_size()))
    engine.skipped_steps = int(saved["skipped_steps"])
    engine.micro_steps = engine.global_steps * engine.gradient_accumulation_steps()
    scheduler = getattr(engine, "lr_scheduler", None)
    if options.lr_scheduler_states and scheduler is not None and saved.get("lr_scheduler") is not None:
        scheduler.load_state_dict(saved["lr_scheduler"])
    return plan.client_state


def load(engine, tag_dir: str, options: Options) -> tuple[str, dict]:
    """Load DeepSpeed tag directory `tag_dir` into `engine` (every rank calls); (model-states path, client_state)."""
    wait_for_pending(engine)
    trainable = trainable_by_group(engine) if not options.module_only else None  # a collective: before any error
    plan, error = None, None
    try:
        plan = make_plan(engine, tag_dir, options, trainable)
    except CheckpointError as caught:
        error = str(caught)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError,
            pickle.UnpicklingError) as caught:
        error = (f"load_checkpoint({tag_dir}): reading the DeepSpeed checkpoint failed: "
                 f"{type(caught).__name__}: {caught}")
    loader.agree(error)
    client_state = apply_plan(engine, plan, options)
    ckpt = plan.checkpoint
    log_dist(f"loaded DeepSpeed checkpoint {tag_dir} (DeepSpeed {ckpt.model_state.get('ds_version', '?')}, "
             f"{ckpt.world_size} ranks, ZeRO stage {ckpt.stage})")
    return plan.load_path, client_state
