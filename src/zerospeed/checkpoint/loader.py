"""Checkpoint directory -> engine state, at any world size and ZeRO stage.

Loading runs in two phases. *Plan*: every rank finds the tag, reads the manifest, checks
names and shapes against its model and pieces, works out which saved element ranges
fill each piece it owns now (`universal.plan_copies`), and verifies the CRC32 of its
share of the files. The ranks then agree: if any rank found a problem, every rank raises
the same CheckpointError and nothing has changed anywhere. *Apply*: module tensors,
master pieces and optimizer states are copied in, the model is refreshed from the
masters (`sync_working_from_master`), then scaler, counters, scheduler and RNG.

Files are memory-mapped (`files.SafetensorsReader`): every saved range is copied once,
from the page cache straight into its destination. A stage-3 engine loads its module with
no collective: each rank copies just its own chunk of every parameter into its shard,
skipping those its masters fill next (`state.load_partitioned`). Other engines get whole
tensors, rebuilt from the master pieces where the save kept them there (`module_source`).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import torch

from zerospeed import comm
from zerospeed.checkpoint import layout, rng
from zerospeed.checkpoint.files import verify_file
from zerospeed.checkpoint.module_source import CheckpointFiles, ModuleSource
from zerospeed.checkpoint.saver import wait_for_pending
from zerospeed.checkpoint.state import gathered_module, is_partitioned, load_partitioned, raw_state_dict
from zerospeed.checkpoint.universal import Copy, missing_ranges, plan_copies, saved_pieces
from zerospeed.errors import CheckpointError
from zerospeed.utils.logging import log_dist, logger

MAX_LISTED = 12


@dataclass(frozen=True)
class Options:
    strict: bool = True
    optimizer_states: bool = True
    lr_scheduler_states: bool = True
    module_only: bool = False
    custom_load_fn: object = None


@dataclass
class PieceLoad:
    """One piece this rank owns now, and the saved ranges that fill it."""

    piece: object  # LogicalPiece
    copies: list[Copy]
    states: dict[str, str]
    values: dict


@dataclass
class Plan:
    tag: str
    tag_dir: str
    manifest: dict
    files: CheckpointFiles
    module_names: list[str]  # the saved module tensors this rank's module holds (its stage's, in a pipeline)
    pieces: list[PieceLoad] = field(default_factory=list)


def _listed(names) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _own_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(getattr(value, "ds_shape", value.shape))
            for name, value in raw_state_dict(module, keep_vars=True).items() if isinstance(value, torch.Tensor)}


def module_names(manifest: dict, engine, where: str) -> list[str]:
    """The saved module tensors this engine's module holds: all of them, or for a pipeline
    checkpoint those of this rank's stage. CheckpointError if the pipeline shapes differ."""
    pipeline = manifest.get("pipeline")
    if pipeline is None:
        return list(manifest["module_tensors"])
    stages = getattr(engine, "num_stages", 1)
    if stages != pipeline["num_stages"]:
        raise CheckpointError(f"{where}: the checkpoint was saved by a pipeline of {pipeline['num_stages']} stages "
                              f"and this engine has {stages}; a pipeline checkpoint loads into the same number "
                              "of stages (its layers are split the same way)")
    return list(pipeline["stage_tensors"][str(engine.stage_id)])


def _check_module(manifest: dict, names: list[str], module: torch.nn.Module, options: Options, where: str) -> None:
    saved = {name: tuple(manifest["module_tensors"][name]["shape"]) for name in names}
    own = _own_shapes(module)
    excluded = set(manifest.get("excluded_frozen_parameters", []))
    wrong = [f"{n}: checkpoint {saved[n]} vs model {own[n]}" for n in saved.keys() & own.keys() if saved[n] != own[n]]
    if wrong:
        raise CheckpointError(f"{where}: shapes differ for {len(wrong)} tensors: {_listed(wrong)}")
    missing = own.keys() - saved.keys() - excluded
    unexpected = saved.keys() - own.keys()
    if options.strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model ({len(unexpected)}): {_listed(unexpected)}")
        raise CheckpointError(f"{where}: the model and the checkpoint differ: {'; '.join(parts)}; "
                              "pass load_module_strict=False to load the tensors they share")


def _plan_pieces(manifest: dict, optimizer, options: Options, where: str) -> list[PieceLoad]:
    saved = saved_pieces(manifest["shards"])
    parameters = manifest["parameters"]
    shards = manifest["shards"]
    loads, missing = [], []
    for piece in optimizer.logical_pieces():
        if piece.name not in parameters:
            missing.append(piece.name)
            continue
        if tuple(parameters[piece.name]["shape"]) != tuple(piece.shape):
            raise CheckpointError(f"{where}: parameter {piece.name} has shape {tuple(parameters[piece.name]['shape'])} "
                                  f"in the checkpoint, {tuple(piece.shape)} in the model")
        copies = plan_copies(saved[piece.name], piece.start, piece.end)
        gaps = missing_ranges(copies, piece.start, piece.end)
        if gaps:
            raise CheckpointError(f"{where}: elements {gaps} of parameter {piece.name} are in no shard of the checkpoint")
        first = shards[str(copies[0].source.rank)]["pieces"][copies[0].source.index]
        loads.append(PieceLoad(piece, copies, first["states"], first["values"]))
    if missing and options.strict:
        raise CheckpointError(f"{where}: trainable parameters with no saved fp32 weights ({len(missing)}): "
                              f"{_listed(missing)}; pass load_module_strict=False to keep their current values")
    if options.optimizer_states and manifest.get("optimizer"):
        saved_groups, own_groups = manifest["optimizer"]["param_groups"], len(optimizer.param_groups)
        if saved_groups != own_groups:
            raise CheckpointError(f"{where}: the checkpoint's optimizer has {saved_groups} param groups, this one "
                                  f"{own_groups}; pass load_optimizer_states=False to load weights only")
    return loads


def _files_to_verify(manifest: dict, options: Options, rank: int, world: int) -> list[str]:
    """This rank's share of the files: each file is checked by one rank, the ranks in parallel.

    Saving rank r's shard goes to rank r mod world (at an unchanged world size the rank that
    reads it next, from pages the check just brought in); every other file to the rank with
    the fewest bytes to check so far.
    """
    files = manifest["files"]
    shard_owner = {shard["file"]: int(r) % world for r, shard in manifest.get("shards", {}).items()}
    needed = sorted(files)
    if options.module_only and not manifest.get("module_tensors_in_shards"):
        module_files = {layout.MODEL_FILE, layout.ENGINE_STATE_FILE, *manifest.get("module_files", {}).values()}
        needed = [n for n in needed if n in module_files]
    load = [0] * world
    mine = []
    for name in sorted(needed, key=lambda n: (n not in shard_owner, n)):
        owner = shard_owner.get(name)
        if owner is None:
            owner = min(range(world), key=lambda r: (load[r], r))
        load[owner] += files[name]["bytes"]
        if owner == rank:
            mine.append(name)
    return mine


def make_plan(engine, load_dir: str, tag, options: Options) -> Plan | None:
    resolved = layout.resolve_tag_dir(load_dir, tag)
    if resolved is None:
        return None
    tag, tag_dir = resolved
    manifest = layout.read_manifest(tag_dir)
    where = f"load_checkpoint({tag_dir})"
    names = module_names(manifest, engine, where)
    if options.custom_load_fn is None:
        _check_module(manifest, names, engine.module, options, where)
    ModuleSource(manifest).check(where)
    plan = Plan(tag, tag_dir, manifest, CheckpointFiles(tag_dir, manifest), names)
    if engine.optimizer is not None and not options.module_only:
        if not manifest.get("shards") or manifest.get("optimizer") is None:
            raise CheckpointError(f"{where}: the checkpoint holds no optimizer state; pass load_module_only=True")
        plan.pieces = _plan_pieces(manifest, engine.optimizer, options, where)
    for name in _files_to_verify(manifest, options, comm.get_rank(), comm.get_world_size()):
        verify_file(os.path.join(tag_dir, name), manifest["files"][name])
    return plan


def agree(error: str | None) -> None:
    """Raise the same CheckpointError on every rank if any rank had one (a collective)."""
    errors = [error]
    if comm.get_world_size() > 1:
        errors = [None] * comm.get_world_size()
        comm.all_gather_object(errors, error)
    failed = [(rank, message) for rank, message in enumerate(errors) if message]
    if failed:
        own = [m for r, m in failed if r == comm.get_rank()]
        first = own[0] if own else failed[0][1]
        others = "" if len(failed) == 1 else f" (ranks with errors: {[r for r, _ in failed]})"
        raise CheckpointError(first + others)


# -- apply ------------------------------------------------------------------------------------
def _filled_by_masters(engine, plan: Plan) -> set[int]:
    """Ids of the parameters whose elements on this rank the master pieces about to be loaded cover."""
    named = dict(engine.module.named_parameters(remove_duplicate=False))
    return {id(named[load.piece.name]) for load in plan.pieces if load.piece.name in named}


def _rewritten_by_masters(engine, plan: Plan) -> set[str]:
    """Stages 0-2: state-dict names of the parameters that the master pieces about to be loaded
    rewrite whole (`sync_working_from_master` writes back and all-gathers every parameter of
    every bucket), so the module load need not read them."""
    saved = plan.manifest.get("parameters", {})
    rewritten: set[int] = set()
    for master in getattr(engine.optimizer, "masters", ()):
        bucket = getattr(master, "bucket", None)
        for name, param in zip(getattr(bucket, "names", ()), getattr(bucket, "params", ())):
            if name in saved:
                rewritten.add(id(param))
    return {name for name, param in engine.module.named_parameters(remove_duplicate=False) if id(param) in rewritten}


def _load_module(engine, plan: Plan, options: Options) -> None:
    source = ModuleSource(plan.manifest, plan.files)
    restoring = not options.module_only and engine.optimizer is not None and options.custom_load_fn is None
    if is_partitioned(engine.module) and options.custom_load_fn is None:
        load_partitioned(engine.module, source, _filled_by_masters(engine, plan) if restoring else set())
        return
    if options.custom_load_fn is not None:  # whole tensors the function may keep: copies
        state = {name: source.full(name) for name in plan.module_names}
        with gathered_module(engine.module, modify=True):
            options.custom_load_fn(src=state, dst=engine.module)
        return
    skipped = _rewritten_by_masters(engine, plan) if restoring else set()
    # Views of the mapped module file where the tensors are there: load_state_dict copies each once.
    state = {name: source.tensor(name) for name in plan.module_names if name not in skipped}
    excluded = set(plan.manifest.get("excluded_frozen_parameters", []))
    strict = options.strict and not excluded and not skipped  # names were checked in the plan phase
    with gathered_module(engine.module, modify=True):
        engine.module.load_state_dict(state, strict=strict)


def _scalar_device(optimizer, tensor: torch.Tensor) -> torch.device:
    """Where torch optimizers keep `step`: on the parameter's device only when fused or capturable."""
    for group in optimizer.param_groups:
        if any(p is tensor for p in group["params"]):
            if group.get("fused") or group.get("capturable"):
                return tensor.device
    return torch.device("cpu")


def _fill(load: PieceLoad, key: str, files: CheckpointFiles, like: torch.Tensor | None) -> torch.Tensor:
    """The wanted range of saved tensor `p<i>.<key>` assembled from its copies, into `like` when given
    (else a new tensor): each saved range is copied once, from the mapped file."""
    target = like
    for copy in load.copies:
        source = files.shard(copy.source.rank).tensor(f"p{copy.source.index}.{key}")
        part = source[copy.source_offset : copy.source_offset + copy.length]
        if target is None:
            target = torch.empty(load.piece.end - load.piece.start, dtype=part.dtype, device=load.piece.tensor.device)
        target[copy.target_offset : copy.target_offset + copy.length].copy_(part)
    return target


def _reusable(current, load: PieceLoad, key: str, files: CheckpointFiles) -> torch.Tensor | None:
    """The piece's existing state tensor `key` when the saved one can be copied into it as is."""
    if not isinstance(current, torch.Tensor) or current.dim() != 1:
        return None
    source = load.copies[0].source
    saved_dtype = files.shard(source.rank).tensor(f"p{source.index}.state.{key}").dtype
    fits = current.numel() == load.piece.end - load.piece.start and current.dtype == saved_dtype
    return current if fits and current.device == load.piece.tensor.device else None


def _load_pieces(engine, plan: Plan, options: Options) -> None:
    optimizer = engine.optimizer
    files = plan.files
    with torch.no_grad():
        for load in plan.pieces:
            _fill(load, "master", files, load.piece.tensor)
            if not options.optimizer_states:
                continue
            current = optimizer.state.get(load.piece.tensor, {})
            state = dict(load.values)
            for key, kind in load.states.items():
                if kind == "elementwise":
                    # Into the state tensor already there (a resumed engine has one): no allocation.
                    state[key] = _fill(load, f"state.{key}", files, _reusable(current.get(key), load, key, files))
                else:
                    source = load.copies[0].source
                    value = files.shard(source.rank).tensor(f"p{source.index}.state.{key}")
                    state[key] = value.to(_scalar_device(optimizer, load.piece.tensor), copy=True)
            optimizer.state[load.piece.tensor] = state


def _load_engine_state(plan: Plan) -> dict:
    with open(os.path.join(plan.tag_dir, layout.ENGINE_STATE_FILE), "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)


def _restore_rng(plan: Plan) -> None:
    rank = comm.get_rank()
    if str(rank) not in plan.manifest["shards"]:
        if rank == plan.manifest["world_size"]:  # say it once, on the first rank without a saved state
            logger.warning(f"checkpoint was saved by {plan.manifest['world_size']} ranks: ranks >= that keep their RNG state")
        return
    handle = plan.files.shard(rank)
    facts = json.loads(handle.metadata()["zerospeed"])["rng"]
    tensors = {k: handle.tensor(k) for k in handle.keys() if k.startswith("rng.")}
    rng.restore(tensors, facts)


def apply_plan(engine, plan: Plan, options: Options) -> dict:
    """Copy the checkpoint into the engine; returns client_state."""
    engine_state = _load_engine_state(plan)
    _load_module(engine, plan, options)
    optimizer = engine.optimizer
    partitioned = is_partitioned(engine.module)
    if options.module_only or optimizer is None:
        if optimizer is not None:
            optimizer.refresh_master_from_working()
        if partitioned:  # units that stay gathered (persistent ones) show the new shards
            from zerospeed.zero.stage3.state_dict import refresh_gathered

            refresh_gathered(engine.module)
        if options.module_only:
            return engine_state.get("client_state", {})
    if optimizer is not None:
        _load_pieces(engine, plan, options)
        if options.optimizer_states:
            for group, saved in zip(optimizer.param_groups, engine_state["param_groups"]):
                group.update(saved)
        optimizer.sync_working_from_master()
    _restore_rng(plan)
    engine.loss_scaler.load_state_dict(engine_state["loss_scaler"])
    for name, value in plan.manifest["counters"].items():
        setattr(engine, name, value)
    scheduler = getattr(engine, "lr_scheduler", None)
    if options.lr_scheduler_states and scheduler is not None and engine_state["lr_scheduler"] is not None:
        scheduler.load_state_dict(engine_state["lr_scheduler"])
    return engine_state.get("client_state", {})


def load(engine, load_dir: str, tag=None, options: Options = Options()) -> tuple[str | None, dict | None]:
    """DeepSpeed's `load_checkpoint`: returns (checkpoint path, client_state), or (None, None) if none."""
    wait_for_pending(engine)
    plan, error = None, None
    try:
        plan = make_plan(engine, str(load_dir), tag, options)
    except CheckpointError as caught:
        error = str(caught)
    except (OSError, ValueError, KeyError) as caught:
        error = f"load_checkpoint({load_dir}): {type(caught).__name__}: {caught}"
    agree(error)
    if plan is None:
        logger.warning(f"load_checkpoint: no complete checkpoint in {load_dir} (no 'latest' file and no tag "
                       "directory with a manifest); nothing loaded")
        return None, None
    try:
        client_state = apply_plan(engine, plan, options)
    finally:
        plan.files.close()
    log_dist(f"loaded checkpoint {plan.tag_dir} (saved by {plan.manifest['world_size']} ranks at ZeRO stage "
             f"{plan.manifest['zero_stage']})")
    return plan.tag_dir, client_state
