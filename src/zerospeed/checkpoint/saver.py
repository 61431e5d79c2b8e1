"""Engine state -> checkpoint directory: snapshot, per-rank writes, then an atomic commit by rank 0.

Protocol (every step is durable before the next starts; see docs/checkpoint-format.md):
1. every rank agrees on the tag (and tag_validation) and on a fresh temp dir name;
2. every rank snapshots its state: its fp32 master pieces and their optimizer states, its
   RNG states; rank 0 also the module's tensors and the engine state (the *stall*; with
   `async_save` the tensors are cloned to CPU here and everything after runs in a thread).
   At stage 3 the module file gets only what no master holds (buffers, frozen parameters,
   gathered unit by unit); the manifest says which module tensors the master pieces hold;
3. every rank writes `rank<r>.safetensors` into `.tmp-<tag>-<id>/` and fsyncs it, then a
   small `.rank<r>.json` note with the file's size, CRC32 and pieces;
4. rank 0, once every note is there, writes `manifest.json` (fsync), renames the temp
   dir to `<tag>` (an existing `<tag>` is moved aside first and deleted only after),
   fsyncs the parent and atomically replaces `latest`.
A process killed at any point leaves the previous checkpoint and `latest` intact.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch

from zerospeed import comm
from zerospeed.checkpoint import layout, rng, snapshot_buffers
from zerospeed.checkpoint.files import atomic_write_text, fsync_dir, write_bytes, write_safetensors
from zerospeed.checkpoint.module_source import ModuleSource
from zerospeed.checkpoint.state import ModuleSnapshot, is_partitioned, rank0_module_snapshot
from zerospeed.errors import CheckpointError
from zerospeed.utils.logging import log_dist, logger
from zerospeed.version import __version__

NOTE_WAIT_TIMEOUT_S = float(os.environ.get("ZEROSPEED_CKPT_NOTE_TIMEOUT", "1800"))


@dataclass
class Snapshot:
    """Everything one rank writes for one checkpoint, taken at one instant."""

    rank: int
    world_size: int
    save_dir: str
    tag: str
    temp_dir: str
    save_latest: bool
    shard: dict[str, torch.Tensor]
    shard_meta: dict
    model: dict[str, torch.Tensor] | None = None  # module-file writers only (tied tensors once)
    module_file: str = layout.MODEL_FILE
    module_note: dict | None = None  # pipeline stage writers: what their module file holds, for the manifest
    engine_state: bytes | None = None  # rank 0 only
    manifest: dict = field(default_factory=dict)  # rank 0 only: the fields known before writing
    stall_s: float = 0.0  # how long save_checkpoint blocked
    step_wait_s: float = 0.0  # async, deferred copies: how long the next optimizer step waited for them


def agree_on_tag(engine, tag, previous_error: str | None = None) -> tuple[str, str]:
    """The tag (validated across ranks as `checkpoint.tag_validation` says) and rank 0's temp-dir id.

    `previous_error` (this rank's failed async save) fails the save on every rank.
    """
    tag = f"global_step{engine.global_steps}" if tag is None else str(tag)
    mine = (tag, uuid.uuid4().hex[:12], previous_error)
    gathered = [mine]
    if comm.get_world_size() > 1:
        gathered = [None] * comm.get_world_size()
        comm.all_gather_object(gathered, mine)
    failed = [f"rank {r}: {e}" for r, (_, _, e) in enumerate(gathered) if e]
    if failed:
        raise CheckpointError("save_checkpoint: the previous async save failed; " + "; ".join(failed))
    if not tag or tag.startswith(".") or "/" in tag or os.sep in tag or tag == layout.LATEST:
        raise CheckpointError(f"checkpoint tag {tag!r} is not a valid directory name (no '/', no leading '.', not 'latest')")
    tags = [t for t, _, _ in gathered]
    mode = engine._config.checkpoint.tag_validation
    if mode != "IGNORE" and len(set(tags)) > 1:
        detail = ", ".join(f"rank {r}: {t!r}" for r, t in enumerate(tags))
        message = f"save_checkpoint: ranks passed different tags ({detail}); every rank must save the same tag"
        if mode == "FAIL":
            raise CheckpointError(message + " (checkpoint.tag_validation = Fail)")
        logger.warning(message + " (checkpoint.tag_validation = Warn); using rank 0's tag")
    return gathered[0][0], gathered[0][1]


def _group_of(optimizer) -> dict[int, int]:
    return {id(t): g for g, group in enumerate(optimizer.param_groups) for t in group["params"]}


def _copy(tensor: torch.Tensor, clone: bool) -> torch.Tensor:
    return snapshot_buffers.stage(tensor) if clone else tensor.detach()


def _optimizer_pieces(engine, clone: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Shard tensors `p<i>.master`, `p<i>.state.<key>` and their description, per logical piece."""
    optimizer = engine.optimizer
    if optimizer is None:
        return {}, []
    tensors: dict[str, torch.Tensor] = {}
    described = []
    group_of = _group_of(optimizer)
    for index, piece in enumerate(optimizer.logical_pieces()):
        numel = piece.end - piece.start
        tensors[f"p{index}.master"] = _copy(piece.tensor, clone)
        kinds, values = {}, {}
        for key, value in optimizer.state.get(piece.tensor, {}).items():
            if isinstance(value, torch.Tensor):
                tensors[f"p{index}.state.{key}"] = _copy(value, clone)
                kinds[key] = "elementwise" if value.dim() == 1 and value.numel() == numel else "scalar"
            else:
                values[key] = value
        described.append({
            "name": piece.name, "shape": list(piece.shape), "start": piece.start, "end": piece.end,
            "group": group_of.get(id(piece.tensor), 0), "states": kinds, "values": values,
        })
    return tensors, described


def _engine_state_bytes(engine, client_state: dict, extra: dict) -> bytes:
    optimizer = engine.optimizer
    state = {
        "lr_scheduler": engine.lr_scheduler.state_dict() if getattr(engine, "lr_scheduler", None) is not None else None,
        "loss_scaler": engine.loss_scaler.state_dict(),
        "param_groups": [] if optimizer is None else [
            {k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups
        ],
        "client_state": client_state,
        "module_extra": extra,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _aliases(module: torch.nn.Module) -> dict[str, list[str]]:
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {group[0]: group[1:] for group in names.values() if len(group) > 1}


def _manifest_base(engine, tag: str, module: ModuleSnapshot, excluded: list[str]) -> dict:
    policy = engine.policy
    optimizer = engine.optimizer
    return {
        "format": layout.FORMAT_NAME, "version": layout.FORMAT_VERSION,
        "minor_version": layout.NON_PIPELINE_MINOR_VERSION,
        "tag": tag,
        "created_unix": time.time(), "zerospeed_version": __version__,
        "world_size": engine.world_size, "zero_stage": engine.zero_optimization_stage(),
        "param_dtype": str(policy.param_dtype).removeprefix("torch."), "master_dtype": "float32",
        "counters": {k: int(getattr(engine, k)) for k in ("global_steps", "global_samples", "micro_steps", "skipped_steps")},
        "optimizer": None if optimizer is None else {
            "class": type(optimizer.optimizer).__name__, "param_groups": len(optimizer.param_groups)},
        "module_file": layout.MODEL_FILE,
        "module_tensors": module.specs,
        "module_ties": module.ties,
        "module_tensors_in_shards": module.in_shards,
        "aliases": _aliases(engine.module),
        "frozen_parameters": [n for n, p in engine.module.named_parameters() if not p.requires_grad],
        "excluded_frozen_parameters": excluded,
        "config": engine._config.to_dict() if hasattr(engine._config, "to_dict") else {},
    }


def _master_param_names(engine) -> dict[int, str]:
    """Stage 3: the parameters whose values the fp32 master pieces hold (the same on every rank)."""
    if engine.optimizer is None or not is_partitioned(engine.module):
        return {}
    from zerospeed.zero.stage3.state_dict import master_param_names

    return master_param_names(engine.optimizer)


def _pipeline_stage(engine) -> tuple[int, int, bool] | None:
    """(stage id, number of stages, writes this stage's module file) of a pipeline engine with
    several stages, else None. A stage's layers live only on its ranks: the first data-parallel
    rank of each stage writes them."""
    stages = getattr(engine, "num_stages", 1)
    if stages <= 1:
        return None
    return engine.stage_id, stages, engine.grid.get_data_parallel_rank() == 0


def take_snapshot(engine, save_dir: str, tag: str, run_id: str, client_state: dict, save_latest: bool,
                  exclude_frozen: bool, clone: bool) -> Snapshot:
    """This rank's part of the checkpoint; tensors cloned to CPU when `clone` (async save)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    shard, pieces = _optimizer_pieces(engine, clone)
    rng_tensors, rng_facts = rng.capture()
    shard.update(rng_tensors)
    snap = Snapshot(
        rank=rank, world_size=world, save_dir=save_dir, tag=tag,
        temp_dir=os.path.join(save_dir, f"{layout.TEMP_PREFIX}{tag}-{run_id}"), save_latest=save_latest,
        shard=shard, shard_meta={"rank": rank, "pieces": pieces, "rng": rng_facts},
    )
    excluded = [n for n, p in engine.module.named_parameters() if not p.requires_grad] if exclude_frozen else []
    # At stage 3 a collective when some parameter has no master (its unit is gathered).
    pipe = _pipeline_stage(engine)
    module = rank0_module_snapshot(engine.module, _master_param_names(engine), exclude=set(excluded), clone=clone,
                                   writer=None if pipe is None else pipe[2])
    if module is not None:
        snap.model = module.tensors
        if pipe is not None:
            snap.module_file = layout.stage_module_file(pipe[0])
            snap.module_note = {"stage": pipe[0], "file": snap.module_file, "specs": module.specs, "ties": module.ties}
    if rank == 0:
        snap.engine_state = _engine_state_bytes(engine, client_state, module.extra)
        snap.manifest = _manifest_base(engine, tag, module, excluded)
        if pipe is not None:
            snap.manifest.update(minor_version=layout.PIPELINE_MINOR_VERSION, pipeline={"num_stages": pipe[1]})
    return snap


def write_rank_files(snap: Snapshot) -> None:
    """This rank's shard (and rank 0's model and engine state), fsynced, then its note to rank 0."""
    os.makedirs(snap.temp_dir, exist_ok=True)
    files = {}
    name = layout.shard_file(snap.rank)
    metadata = {"zerospeed": json.dumps(snap.shard_meta)}
    files[name] = write_safetensors(os.path.join(snap.temp_dir, name), snap.shard, metadata).to_json()
    if snap.model is not None:
        files[snap.module_file] = write_safetensors(os.path.join(snap.temp_dir, snap.module_file), snap.model).to_json()
    if snap.rank == 0:
        files[layout.ENGINE_STATE_FILE] = write_bytes(
            os.path.join(snap.temp_dir, layout.ENGINE_STATE_FILE), snap.engine_state).to_json()
    layout.crash_point("after_shard", snap.rank)
    note = {"rank": snap.rank, "shard": name, "files": files, "pieces": snap.shard_meta["pieces"],
            "module": snap.module_note}
    write_bytes(os.path.join(snap.temp_dir, layout.rank_info_file(snap.rank)), json.dumps(note).encode())


def _read_notes(snap: Snapshot, wait: bool) -> list[dict]:
    deadline = time.monotonic() + NOTE_WAIT_TIMEOUT_S
    notes = []
    for rank in range(snap.world_size):
        path = os.path.join(snap.temp_dir, layout.rank_info_file(rank))
        # Async saves have no barrier: rank 0's writer thread waits for the other ranks' notes.
        while wait and not os.path.isfile(path):
            if time.monotonic() > deadline:
                raise CheckpointError(f"checkpoint '{snap.tag}': rank {rank} did not finish writing its shard "
                                      f"within {NOTE_WAIT_TIMEOUT_S:.0f}s ({path} missing); the save is abandoned")
            time.sleep(0.05)
        with open(path) as f:
            notes.append(json.load(f))
    return notes


def _merge_stage_modules(manifest: dict, notes: list[dict]) -> None:
    """Pipeline: every stage's module tensors in the manifest, each stored name mapped to its file
    (a tied layer on several stages is stored by the first), and the names of each stage."""
    tensors, ties, files, stages = {}, {}, {}, {}
    for note in notes:
        module = note.get("module")
        if module is None:
            continue
        stages[str(module["stage"])] = list(module["specs"])
        for name, spec in module["specs"].items():
            tensors.setdefault(name, spec)
            stored = module["ties"].get(name, name)
            if name in module["ties"]:
                ties.setdefault(name, stored)
            files.setdefault(stored, module["file"])
    missing = [str(s) for s in range(manifest["pipeline"]["num_stages"]) if str(s) not in stages]
    if missing:
        raise CheckpointError(f"checkpoint '{manifest['tag']}': no rank wrote the module of pipeline stage(s) "
                              f"{', '.join(missing)}")
    manifest.update(module_tensors=tensors, module_ties=ties, module_files=files)
    manifest["pipeline"] = {**manifest["pipeline"], "stage_tensors": stages}


def commit(snap: Snapshot, wait_for_notes: bool) -> None:
    """Rank 0: fold the notes into the manifest, write it last, and publish the tag atomically."""
    notes = _read_notes(snap, wait_for_notes)
    layout.crash_point("before_manifest", snap.rank)
    manifest = dict(snap.manifest)
    manifest["files"] = {name: info for note in notes for name, info in note["files"].items()}
    manifest["shards"] = {str(n["rank"]): {"file": n["shard"], "pieces": n["pieces"]} for n in notes}
    parameters: dict[str, dict] = {}
    for note in notes:
        for piece in note["pieces"]:
            parameters.setdefault(piece["name"], {"shape": piece["shape"], "group": piece["group"]})
    manifest["parameters"] = parameters
    if "pipeline" in manifest:
        _merge_stage_modules(manifest, notes)
    # The module tensors left out of the module file must be whole in the shards, or the save fails here.
    ModuleSource(manifest).check(f"checkpoint '{snap.tag}'")
    write_bytes(os.path.join(snap.temp_dir, layout.MANIFEST), json.dumps(manifest, indent=1, default=str).encode())
    for rank in range(snap.world_size):
        os.remove(os.path.join(snap.temp_dir, layout.rank_info_file(rank)))
    fsync_dir(snap.temp_dir)
    layout.crash_point("after_manifest", snap.rank)
    final = os.path.join(snap.save_dir, snap.tag)
    set_aside = None
    if os.path.exists(final):
        set_aside = os.path.join(snap.save_dir, f"{layout.OLD_PREFIX}{snap.tag}-{os.path.basename(snap.temp_dir)[-12:]}")
        os.rename(final, set_aside)
        layout.crash_point("after_old_aside", snap.rank)
    os.rename(snap.temp_dir, final)
    fsync_dir(snap.save_dir)
    layout.crash_point("after_rename", snap.rank)
    if snap.save_latest:
        atomic_write_text(os.path.join(snap.save_dir, layout.LATEST), snap.tag)
    layout.crash_point("after_latest", snap.rank)
    if set_aside is not None:
        shutil.rmtree(set_aside, ignore_errors=True)
    _remove_leftovers(snap.save_dir)


def _remove_leftovers(save_dir: str) -> None:
    """Temp dirs of saves that died, and set-aside copies whose tag is complete again."""
    for name in os.listdir(save_dir):
        path = os.path.join(save_dir, name)
        if name.startswith(layout.TEMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(layout.OLD_PREFIX) and os.path.isdir(path):
            tag = name[len(layout.OLD_PREFIX):].rsplit("-", 1)[0]
            if layout.is_complete(os.path.join(save_dir, tag)):
                shutil.rmtree(path, ignore_errors=True)


class PendingSave:
    """An async save's writer thread; `wait()` joins it and re-raises what it raised."""

    _open: set["PendingSave"] = set()

    def __init__(self, snap: Snapshot, deferred: snapshot_buffers.SnapshotBuffers | None = None) -> None:
        self.snap = snap
        self.deferred = deferred  # a pool whose copies this thread makes before writing
        self.staged = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"zerospeed-ckpt-{snap.tag}", daemon=False)
        PendingSave._open.add(self)
        self.thread.start()

    def _run(self) -> None:
        try:
            try:
                if self.deferred is not None:
                    self.deferred.run_deferred()
            finally:
                self.staged.set()  # also on failure: the step must not wait forever (wait() reports it)
            write_rank_files(self.snap)
            if self.snap.rank == 0:
                commit(self.snap, wait_for_notes=True)
        except BaseException as error:  # noqa: BLE001 - reported by wait()
            self.error = error

    def wait_staged(self) -> None:
        """Block until the deferred copies are made (the optimizer step calls this before updating)."""
        started = time.perf_counter()
        self.staged.wait()
        self.snap.step_wait_s += time.perf_counter() - started

    def wait(self) -> None:
        self.thread.join()
        PendingSave._open.discard(self)
        if self.error is not None:
            error, self.error = self.error, None
            raise CheckpointError(f"async checkpoint '{self.snap.tag}' failed: {error}") from error

    @classmethod
    def wait_all(cls) -> None:
        for pending in list(cls._open):
            try:
                pending.wait()
            except CheckpointError as error:
                logger.error(str(error))


atexit.register(PendingSave.wait_all)


def save(engine, save_dir: str, tag=None, client_state: dict | None = None, save_latest: bool = True,
         exclude_frozen_parameters: bool = False, async_save: bool = False) -> Snapshot:
    """Write a checkpoint of `engine` (every rank must call). Returns the snapshot (its `stall_s`)."""
    previous_error = None
    try:
        wait_for_pending(engine, synchronize=False)
    except CheckpointError as error:
        previous_error = str(error)
    tag, run_id = agree_on_tag(engine, tag, previous_error)
    os.makedirs(save_dir, exist_ok=True)
    started = time.perf_counter()
    defer = async_save and _can_defer_copies(engine)
    pool = snapshot_buffers.pool_of(engine) if async_save else None
    with snapshot_buffers.staging(pool, defer=defer):
        snap = take_snapshot(engine, save_dir, tag, run_id, dict(client_state or {}), save_latest,
                             exclude_frozen_parameters, clone=async_save)
    if async_save:
        pending = PendingSave(snap, pool if defer else None)
        if defer:
            engine.optimizer.update_barrier = pending.wait_staged
        engine.__dict__["_checkpoint_pending"] = pending
    snap.stall_s = time.perf_counter() - started  # copies made (or handed to the writer) and synchronized
    if async_save:
        return snap
    write_rank_files(snap)
    if snap.world_size > 1:
        comm.barrier()
    if snap.rank == 0:
        commit(snap, wait_for_notes=False)
    if snap.world_size > 1:
        comm.barrier()
    log_dist(f"saved checkpoint {os.path.join(save_dir, tag)}")
    return snap


def _can_defer_copies(engine) -> bool:
    """Whether an async save may copy masters, optimizer states and parameters in its writer
    thread: they change only in the optimizer step, which then waits for the copies. Not with
    states on NVMe (swapped out again when the save returns) or without a ZeRO optimizer."""
    optimizer = getattr(engine, "optimizer", None)
    tier = getattr(optimizer, "tier", None)
    return hasattr(optimizer, "update_barrier") and tier is not None and not getattr(tier, "chunked", True)


def wait_for_pending(engine, synchronize: bool = True) -> None:
    """Block until this engine's async save (if any) is written and, when `synchronize`
    (every rank calls), committed by rank 0 as seen from every rank."""
    pending = engine.__dict__.pop("_checkpoint_pending", None)
    if pending is not None:
        pending.wait()
        if synchronize and comm.get_world_size() > 1:
            comm.barrier()
