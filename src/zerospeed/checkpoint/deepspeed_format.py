"""Read checkpoint directories written by DeepSpeed 0.x: find them, reassemble fp32 weights and optimizer state.

    <dir>/latest                                             the tag, as text
    <dir>/<tag>/mp_rank_00_model_states.pt                   stages 0-2: module state dict, counters, scheduler,
                                                             param_shapes, client state (top-level keys)
    <dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_model_states.pt  stage 3, one per rank: the same, module parameters
                                                             are empty placeholders, frozen ones are fragments
    <dir>/<tag>/[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt   stages 1-3: rank r's fp32 partition of each
                                                             param group and the torch optimizer's state for it

The pickles name DeepSpeed classes; `foreign_pickle` reads them without DeepSpeed. A
checkpoint becomes *sources* (a 1-D fp32 tensor and the optimizer state laid out like
it: one rank's flat partition of a param group, or one parameter at stage 0) and
*fragments* (elements [start, end) of a parameter, found at `offset` in a source), so
any range of any parameter is a copy of overlaps (`universal.plan_copies`), whatever
world size and stage saved it. `deepspeed_load` puts it into an engine.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from zerospeed.checkpoint import layout
from zerospeed.checkpoint.foreign_pickle import ForeignObject, load_checkpoint_file
from zerospeed.checkpoint.universal import SavedPiece, missing_ranges, plan_copies
from zerospeed.errors import CheckpointError

MODEL_FILE = "mp_rank_00_model_states.pt"
_MODEL_RE = re.compile(r"^(?:zero_pp_rank_(?P<dp>\d+)_)?mp_rank_(?P<mp>\d+)_model_states\.pt$")
_OPTIM_RE = re.compile(r"^(?:bf16_|fp16_)?zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_?optim_states\.pt$")
_PIPELINE_RE = re.compile(r"^layer_\d+-model_\d+-model_states\.pt$")
_MOE_RE = re.compile(r"^((layer_\d+_)?expert_\d+_mp_rank_\d+_model_states|expp_rank_\d+_mp_rank_\d+_optim_states)\.pt$")
ADAM_STATE_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

# DeepSpeed's key names (deepspeed/checkpoint/constants.py)
OPTIMIZER_STATE_DICT = "optimizer_state_dict"
BASE_OPTIMIZER_STATE = "base_optimizer_state"
BASE_OPTIMIZER_STATE_STEP = "base_optimizer_state_step"
SINGLE_PARTITION_OF_FP32_GROUPS = "single_partition_of_fp32_groups"
FP32_FLAT_GROUPS = "fp32_flat_groups"
GROUP_PADDINGS = "group_paddings"
PARAM_ALIGNMENT_PADDINGS = "param_alignment_paddings"
PARTITION_COUNT = "partition_count"
ZERO_STAGE = "zero_stage"


@dataclass
class Source:
    """A 1-D fp32 tensor and optimizer state whose tensors share its element positions (plus padding)."""

    fp32: torch.Tensor
    state: dict[str, Any]
    file: str

    def __post_init__(self) -> None:  # DeepSpeed saves its fp32 partitions with requires_grad=True
        self.fp32 = self.fp32.detach()
        self.state = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in self.state.items()}


@dataclass(frozen=True)
class Fragment:
    """Elements [start, end) of parameter `name` (flattened) are `source` elements [offset, offset + end - start)."""

    name: str
    start: int
    end: int
    source: int
    offset: int


@dataclass
class DeepSpeedCheckpoint:
    """One tag directory, read: where every trainable parameter's fp32 values and optimizer state are."""

    tag_dir: str
    stage: int
    world_size: int
    model_file: str  # the file DeepSpeed's load_checkpoint would read for rank 0
    model_state: dict  # its contents: module, counters, lr_scheduler, client state...
    rank_model_states: list[dict] = field(default_factory=list)  # stage 3: every rank's model-states file
    optim_files: list[str] = field(default_factory=list)
    shapes: dict[str, torch.Size] = field(default_factory=dict)  # trainable parameters with fp32 sources
    group_of: dict[str, int] = field(default_factory=dict)  # trainable parameter -> its param group
    sources: list[Source] = field(default_factory=list)
    fragments: list[Fragment] = field(default_factory=list)
    by_name: dict[str, list[int]] = field(default_factory=dict)  # parameter -> indices into `fragments`
    param_groups: list[dict] | None = None  # saved hyperparameters (lr, betas, ...) per param group
    loss_scaler: dict | None = None  # {"dynamic", "cur_scale", ...} as saved

    def add_fragment(self, fragment: Fragment) -> None:
        self.by_name.setdefault(fragment.name, []).append(len(self.fragments))
        self.fragments.append(fragment)

    def saved_pieces(self, name: str) -> list[SavedPiece]:
        """`name`'s fragments as universal.SavedPiece (rank: the source, index: the fragment)."""
        return [SavedPiece(self.fragments[i].start, self.fragments[i].end, self.fragments[i].source, i)
                for i in self.by_name.get(name, [])]

    def fragment_values(self, index: int, key: str = "master") -> torch.Tensor:
        """Fragment `index`'s fp32 values (`master`) or its elementwise optimizer state `key`, 1-D."""
        fragment = self.fragments[index]
        source = self.sources[fragment.source]
        flat = source.fp32 if key == "master" else source.state[key]
        return flat.reshape(-1)[fragment.offset : fragment.offset + fragment.end - fragment.start]

    def full_tensor(self, name: str) -> torch.Tensor:
        """Parameter `name`'s full fp32 value, reassembled from its fragments."""
        shape = self.shapes[name]
        numel = math.prod(shape)
        copies = plan_copies(self.saved_pieces(name), 0, numel)
        gaps = missing_ranges(copies, 0, numel)
        if gaps:
            raise CheckpointError(f"{self.tag_dir}: elements {gaps} of parameter {name} are in no "
                                  f"DeepSpeed partition file")
        full = torch.empty(numel, dtype=torch.float32)
        for copy in copies:
            values = self.fragment_values(copy.source.index)
            full[copy.target_offset : copy.target_offset + copy.length] = (
                values[copy.source_offset : copy.source_offset + copy.length])
        return full.view(shape)


# -- finding a checkpoint ---------------------------------------------------------------------
def is_deepspeed_tag_dir(tag_dir: str) -> bool:
    """A directory without a zerospeed manifest that holds DeepSpeed's model-states file."""
    if not os.path.isdir(tag_dir) or os.path.isfile(os.path.join(tag_dir, layout.MANIFEST)):
        return False
    return any(os.path.isfile(os.path.join(tag_dir, name))
               for name in (MODEL_FILE, "zero_pp_rank_0_mp_rank_00_model_states.pt"))


def find_checkpoint(load_dir: str, tag=None) -> str | None:
    """The tag directory to read if `load_dir`'s `tag` (default: the one `latest` names) is a DeepSpeed checkpoint."""
    load_dir = os.fspath(load_dir)
    if tag is None:
        tag = layout.read_latest(load_dir) if os.path.isdir(load_dir) else None
        if tag is None:
            return None
    tag_dir = os.path.join(load_dir, str(tag))
    return tag_dir if is_deepspeed_tag_dir(tag_dir) else None


def _scan(tag_dir: str) -> tuple[dict[int, str], dict[int, str], str | None]:
    """(stage-3 model files by rank, optimizer files by rank, the stage 0-2 model file); refuses what we cannot read."""
    unsupported = []
    rank_models, optims, plain_model = {}, {}, None
    for name in sorted(os.listdir(tag_dir)):
        path = os.path.join(tag_dir, name)
        model, optim = _MODEL_RE.match(name), _OPTIM_RE.match(name)
        if name == "offloaded_tensors" and os.path.isdir(path):
            unsupported.append(f"{name}/ (optimizer state swapped to NVMe by ZeRO-Infinity is not read)")
        elif name == "zero" and os.path.isdir(path):
            unsupported.append(f"{name}/ (a universal checkpoint made by ds_to_universal is not read)")
        elif _PIPELINE_RE.match(name):
            unsupported.append(f"{name} (pipeline-parallel layer files)")
        elif _MOE_RE.match(name):
            unsupported.append(f"{name} (mixture-of-experts expert files)")
        elif (model or optim) and int((model or optim)["mp"]) != 0:
            unsupported.append(f"{name} (tensor/model-parallel rank {int((model or optim)['mp'])})")
        elif model and model["dp"] is not None:
            rank_models[int(model["dp"])] = path
        elif model:
            plain_model = path
        elif optim:
            optims[int(optim["dp"])] = path
    if unsupported:
        raise CheckpointError(f"DeepSpeed checkpoint {tag_dir} holds what zerospeed cannot load: "
                              f"{'; '.join(unsupported)}. Supported: data-parallel ZeRO stages 0-3 "
                              "(mp_rank_00 files only), see docs/deepspeed-checkpoints.md")
    return rank_models, optims, plain_model


def _ranks(found: dict[int, str], what: str, tag_dir: str) -> list[str]:
    missing = [r for r in range(max(found) + 1) if r not in found] if found else []
    if missing:
        raise CheckpointError(f"DeepSpeed checkpoint {tag_dir} lacks the {what} of ranks {missing} "
                              f"(found ranks {sorted(found)}): the save did not finish or files were removed")
    return [found[r] for r in sorted(found)]


def _int(value: Any) -> int:
    return int(value.value) if isinstance(value, ForeignObject) else int(value)


def _world_of(partition_count: Any) -> int:
    counts = {int(c) for c in partition_count} if isinstance(partition_count, (list, tuple)) else {int(partition_count)}
    if len(counts) != 1:
        raise CheckpointError(f"param groups are partitioned over different world sizes {sorted(counts)} "
                              "(expert-parallel groups): not supported")
    return counts.pop()


def _shape_lists(param_shapes: Any, where: str) -> list[list[tuple[str, torch.Size]]]:
    if not isinstance(param_shapes, (list, tuple)) or not param_shapes:
        raise CheckpointError(f"{where}: 'param_shapes' is missing, so the flat partitions cannot be split into "
                              "parameters")
    return [[(name, torch.Size(shape)) for name, shape in group.items()] for group in param_shapes]


# -- optimizer state ---------------------------------------------------------------------------
def _normalized_state(state: dict | None, group: dict | None, step: Any = None) -> dict[str, Any]:
    """The state with `step` as a 0-d float32 tensor wherever DeepSpeed kept it (state, group, or aside)."""
    state = dict(state or {})
    if "step" not in state:
        step = group.get("step") if group and "step" in group else step
        if step is not None and state:
            state["step"] = step
    if "step" in state and not isinstance(state["step"], torch.Tensor):
        state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
    return state


def _hyperparameters(torch_state: dict | None) -> list[dict] | None:
    if not isinstance(torch_state, dict) or "param_groups" not in torch_state:
        return None
    return [{k: v for k, v in group.items() if k != "params"} for group in torch_state["param_groups"]]


def _indexed_states(torch_state: dict, count: int, where: str) -> list[tuple[dict, dict]]:
    """(state, param group) of each of the `count` tensors a torch optimizer state_dict numbers 0.. in group order."""
    order = [(index, group) for group in torch_state["param_groups"] for index in group["params"]]
    if len(order) != count:
        raise CheckpointError(f"{where}: the optimizer state numbers {len(order)} tensors, the checkpoint holds "
                              f"{count} fp32 tensors for it")
    return [(torch_state["state"].get(index, {}), group) for index, group in order]


def _scaler_state(scaler: Any) -> dict | None:
    if isinstance(scaler, ForeignObject) and isinstance(scaler.state, dict):
        return dict(scaler.state, dynamic=bool(scaler.state.get("dynamic", "Dynamic" in scaler.foreign_name)))
    return None


# -- partition layouts ----------------------------------------------------------------------------
def _add_flat_group(ckpt: DeepSpeedCheckpoint, shapes: list, paddings: list[int], source: int, first: int,
                    last: int) -> None:
    """Fragments of a flat group (params back to back, `paddings[i]` zeros after param i) within [first, last)."""
    offset = 0
    for (name, shape), padding in zip(shapes, paddings):
        numel = math.prod(shape)
        lo, hi = max(offset, first), min(offset + numel, last)
        if lo < hi:
            ckpt.add_fragment(Fragment(name, lo - offset, hi - offset, source, lo - first))
        offset += numel + padding


def _read_zero12(ckpt: DeepSpeedCheckpoint, optim_states: list[dict]) -> None:
    """Stages 1-2 (DeepSpeedZeroOptimizer) and the bf16 optimizer: each group flat, aligned to 2 x world, cut evenly."""
    groups = _shape_lists(ckpt.model_state.get("param_shapes"), ckpt.model_file)
    world = ckpt.world_size
    for rank, (path, saved) in enumerate(zip(ckpt.optim_files, optim_states)):
        state = saved[OPTIMIZER_STATE_DICT]
        partitions = state[SINGLE_PARTITION_OF_FP32_GROUPS]
        trimmed = ZERO_STAGE in state  # DeepSpeedZeroOptimizer drops its last partition's padding, BF16_Optimizer not
        base = state.get(BASE_OPTIMIZER_STATE)
        if len(partitions) != len(groups):
            raise CheckpointError(f"{path}: {len(partitions)} fp32 partitions for {len(groups)} param groups")
        if isinstance(base, list):  # elastic checkpoint: padding-free states per group
            group_states = [(s, None) for s in base]
        else:
            group_states = _indexed_states(base, len(groups), path) if base else [({}, None)] * len(groups)
        alignment_paddings = state.get(PARAM_ALIGNMENT_PADDINGS) or [[0] * len(g) for g in groups]
        for index, (shapes, paddings) in enumerate(zip(groups, alignment_paddings)):
            padded = sum(math.prod(s) for _, s in shapes) + sum(paddings)
            partition = math.ceil(padded / (2 * world)) * 2
            fp32 = partitions[index].reshape(-1)
            expected = partition - int(state[GROUP_PADDINGS][index]) if trimmed else partition
            if fp32.numel() != expected:
                raise CheckpointError(f"{path}: param group {index} partition holds {fp32.numel()} elements, the "
                                      f"layout of {world} ranks gives {expected}: an unknown DeepSpeed layout")
            group_state, group = group_states[index]
            step = state.get(BASE_OPTIMIZER_STATE_STEP)
            ckpt.sources.append(Source(fp32, _normalized_state(group_state, group, step), path))
            first = rank * partition
            _add_flat_group(ckpt, shapes, paddings, len(ckpt.sources) - 1, first, first + fp32.numel())
    for index, shapes in enumerate(groups):
        for name, shape in shapes:
            ckpt.shapes[name], ckpt.group_of[name] = shape, index
    first_state = optim_states[0][OPTIMIZER_STATE_DICT]
    ckpt.param_groups = _hyperparameters(first_state.get(BASE_OPTIMIZER_STATE))
    ckpt.loss_scaler = _scaler_state(first_state.get("loss_scaler"))


def _read_zero3(ckpt: DeepSpeedCheckpoint, optim_states: list[dict]) -> None:
    """Stage 3: each parameter cut in `world` parts of ceil(numel / world); per sub-group, a rank's parts in a row."""
    groups = _shape_lists(ckpt.model_state.get("param_shapes"), ckpt.model_file)
    world = ckpt.world_size
    group_index: dict[int, int] = {}
    for rank, (path, saved) in enumerate(zip(ckpt.optim_files, optim_states)):
        state = saved[OPTIMIZER_STATE_DICT]
        flats = state[FP32_FLAT_GROUPS]
        torch_state = state.get(OPTIMIZER_STATE_DICT)
        if len(flats) != len(groups):
            raise CheckpointError(f"{path}: {len(flats)} fp32 sub-groups for {len(groups)} param_shapes entries")
        states = _indexed_states(torch_state, len(flats), path) if torch_state else [({}, None)] * len(flats)
        for sub_group, (shapes, fp32, (sub_state, group)) in enumerate(zip(groups, flats, states)):
            fp32 = fp32.reshape(-1)
            if torch_state and rank == 0:
                group_index[sub_group] = next(i for i, g in enumerate(torch_state["param_groups"]) if g is group)
            ckpt.sources.append(Source(fp32, _normalized_state(sub_state, group), path))
            offset = 0
            for name, shape in shapes:
                numel = math.prod(shape)
                part = math.ceil(numel / world)
                lo, hi = rank * part, min((rank + 1) * part, numel)
                if lo < hi:
                    ckpt.add_fragment(Fragment(name, lo, hi, len(ckpt.sources) - 1, offset))
                offset += part
            if offset != fp32.numel():
                raise CheckpointError(f"{path}: sub-group {sub_group} holds {fp32.numel()} elements, its parameters' "
                                      f"partitions over {world} ranks take {offset}: an unknown DeepSpeed layout")
    for sub_group, shapes in enumerate(groups):
        for name, shape in shapes:
            ckpt.shapes[name], ckpt.group_of[name] = shape, group_index.get(sub_group, sub_group)
    first_state = optim_states[0][OPTIMIZER_STATE_DICT]
    ckpt.param_groups = _hyperparameters(first_state.get(OPTIMIZER_STATE_DICT))
    ckpt.loss_scaler = _scaler_state(first_state.get("loss_scaler"))


def _read_stage0(ckpt: DeepSpeedCheckpoint, trainable: list[list[tuple[str, tuple]]] | None) -> None:
    """Stage 0: the optimizer's state_dict in the model file, one tensor per parameter (or per group when
    fused), numbered in param-group order. DeepSpeed records no names here: `trainable` gives, per param
    group, the (name, shape) of the loading engine's parameters in module order; shapes are checked."""
    saved = ckpt.model_state.get("optimizer")
    module = ckpt.model_state.get("module") or {}
    if saved is None or trainable is None:
        return
    where = f"{ckpt.model_file} ['optimizer']"
    wrapped = OPTIMIZER_STATE_DICT in saved  # FP16_(Unfused)Optimizer around the torch optimizer (fp16/bf16)
    torch_state = saved[OPTIMIZER_STATE_DICT] if wrapped else saved
    if not isinstance(torch_state, dict) or "param_groups" not in torch_state:
        raise CheckpointError(f"{where}: not a torch optimizer state_dict; this stage-0 layout is not supported")
    saved_groups = torch_state["param_groups"]
    if len(saved_groups) != len(trainable):
        raise CheckpointError(f"{where}: {len(saved_groups)} param groups in the checkpoint, {len(trainable)} here")
    if "fp32_groups_flat" in saved:  # fused: one flat fp32 tensor per group, params back to back
        for index, (flat, (state, group)) in enumerate(zip(saved["fp32_groups_flat"],
                                                           _indexed_states(torch_state, len(trainable), where))):
            ckpt.sources.append(Source(flat.reshape(-1), _normalized_state(state, group), where))
            shapes = [(name, torch.Size(shape)) for name, shape in trainable[index]]
            _add_flat_group(ckpt, shapes, [0] * len(shapes), len(ckpt.sources) - 1, 0, flat.numel())
    else:
        masters = [m for group in saved["fp32_groups"] for m in group] if wrapped else None
        names = [(index, name, shape) for index, group in enumerate(trainable) for name, shape in group]
        states = _indexed_states(torch_state, len(names), where)
        for position, ((index, name, shape), (state, group)) in enumerate(zip(names, states)):
            master = masters[position] if masters is not None else module.get(name)
            shapes = {tuple(v.shape) for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
            if master is not None:
                shapes.add(tuple(master.shape))
            if master is None or shapes != {tuple(shape)}:
                found = None if master is None else sorted(shapes)
                raise CheckpointError(f"{where}: tensor {position} (param group {index}) has shape(s) {found}, the "
                                      f"parameter in that place here, {name}, has {tuple(shape)}: the param groups "
                                      "differ from the ones the checkpoint was saved with")
            ckpt.sources.append(Source(master.detach().reshape(-1).float(), _normalized_state(state, group), where))
            ckpt.add_fragment(Fragment(name, 0, master.numel(), len(ckpt.sources) - 1, 0))
    for index, group in enumerate(trainable):
        for name, shape in group:
            ckpt.shapes[name], ckpt.group_of[name] = torch.Size(shape), index
    ckpt.param_groups = _hyperparameters(torch_state)
    if wrapped and "cur_scale" in saved:
        ckpt.loss_scaler = {k: saved[k] for k in ("cur_scale", "cur_iter", "last_overflow_iter") if k in saved}
        ckpt.loss_scaler["dynamic"] = bool(saved.get("dynamic_loss_scale"))


def read_checkpoint(tag_dir: str, trainable: list[list[tuple[str, tuple]]] | None = None) -> DeepSpeedCheckpoint:
    """Read DeepSpeed tag directory `tag_dir` (optimizer files memory-mapped; tensors are read when used).

    `trainable` (per param group: (name, shape) of the loader's parameters) is needed only to
    name stage-0 optimizer state, which DeepSpeed stores by position.
    """
    rank_models, optims, plain_model = _scan(tag_dir)
    rank_model_files = _ranks(rank_models, "model-states files", tag_dir)
    optim_files = _ranks(optims, "optimizer-states files", tag_dir)
    model_file = rank_model_files[0] if rank_model_files else plain_model
    if model_file is None:
        raise CheckpointError(f"{tag_dir} holds no DeepSpeed model-states file ({MODEL_FILE})")
    model_state = load_checkpoint_file(model_file)
    if not isinstance(model_state, dict) or "module" not in model_state:
        raise CheckpointError(f"{model_file} is not a DeepSpeed model-states file (no 'module' key)")
    if model_state.get("num_experts") or model_state.get("ds_autoep_layers"):
        raise CheckpointError(f"{model_file}: mixture-of-experts checkpoints are not supported")
    if int(model_state.get("mp_world_size") or 1) > 1:
        raise CheckpointError(f"{model_file}: saved with model-parallel world size {model_state['mp_world_size']}; "
                              "only data-parallel checkpoints are supported")
    ckpt = DeepSpeedCheckpoint(tag_dir, 0, int(model_state.get("dp_world_size") or 1), model_file, model_state)
    ckpt.rank_model_states = [model_state] + [load_checkpoint_file(f) for f in rank_model_files[1:]]
    if optim_files:
        optim_states = [load_checkpoint_file(f) for f in optim_files]
        state = optim_states[0].get(OPTIMIZER_STATE_DICT) if isinstance(optim_states[0], dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{optim_files[0]} is not a DeepSpeed ZeRO optimizer-states file")
        ckpt.optim_files, ckpt.world_size = optim_files, _world_of(state.get(PARTITION_COUNT, len(optim_files)))
        if ckpt.world_size != len(optim_files):
            raise CheckpointError(f"{tag_dir}: saved by {ckpt.world_size} ranks but holds {len(optim_files)} "
                                  "optimizer-states files")
        ckpt.stage = _int(state[ZERO_STAGE]) if ZERO_STAGE in state else 1  # BF16_Optimizer: stage-1 layout
        if FP32_FLAT_GROUPS in state:
            _read_zero3(ckpt, optim_states)
        elif SINGLE_PARTITION_OF_FP32_GROUPS in state:
            _read_zero12(ckpt, optim_states)
        else:
            raise CheckpointError(f"{optim_files[0]}: no fp32 partitions ({SINGLE_PARTITION_OF_FP32_GROUPS} or "
                                  f"{FP32_FLAT_GROUPS}); this DeepSpeed optimizer layout is not supported")
        if rank_model_files and len(rank_model_files) != ckpt.world_size:
            raise CheckpointError(f"{tag_dir}: {len(rank_model_files)} stage-3 model-states files for "
                                  f"{ckpt.world_size} ranks")
    elif rank_model_files:
        raise CheckpointError(f"{tag_dir}: a stage-3 checkpoint without optimizer-states files; the parameters "
                              "are only in those files")
    else:
        _read_stage0(ckpt, trainable)
    return ckpt


# -- whole tensors ------------------------------------------------------------------------------------
def _frozen_tensor(ckpt: DeepSpeedCheckpoint, name: str, shape) -> torch.Tensor:
    """A stage-3 frozen parameter from its fragments: ceil(numel / world) elements per rank's model file."""
    fragments = [states.get("frozen_param_fragments") or {} for states in ckpt.rank_model_states]
    numel = math.prod(shape)
    parts = [f[name].reshape(-1) for f in fragments if name in f]
    if len(parts) != ckpt.world_size:
        raise CheckpointError(f"{ckpt.tag_dir}: frozen parameter {name} has fragments from {len(parts)} of "
                              f"{ckpt.world_size} ranks")
    return torch.cat(parts)[:numel].view(torch.Size(shape))


def module_state(ckpt: DeepSpeedCheckpoint) -> dict[str, torch.Tensor]:
    """The module's state dict as DeepSpeed saved it; at stage 3 (empty placeholders in the file) trainable
    parameters are rebuilt in fp32 from the partitions, frozen ones from their fragments."""
    saved = ckpt.model_state["module"]
    if ckpt.stage < 3:
        return dict(saved)
    frozen = ckpt.model_state.get("frozen_param_shapes") or {}
    shared = ckpt.model_state.get("shared_params") or {}
    state = OrderedDict()
    for name, value in saved.items():
        if name in ckpt.shapes:
            state[name] = ckpt.full_tensor(name)
        elif name in frozen:
            state[name] = _frozen_tensor(ckpt, name, frozen[name])
        elif name not in shared:
            state[name] = value
    for name, first in shared.items():
        if first in state:
            state[name] = state[first]
    missing = [n for n in saved if n not in state]
    if missing:
        raise CheckpointError(f"{ckpt.model_file}: no values for {missing} (neither partitions, fragments nor a "
                              "shared parameter)")
    return OrderedDict((name, state[name]) for name in saved)


def _as_fp32(value: torch.Tensor) -> torch.Tensor:
    return value.float() if value.is_floating_point() else value


def fp32_state_dict(checkpoint_dir, tag=None, exclude_frozen_parameters: bool = False) -> dict[str, torch.Tensor]:
    """DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` for a DeepSpeed directory, without DeepSpeed.

    Buffers, frozen parameters (unless excluded), trainable parameters from the fp32 partitions,
    tied names; floating tensors as float32. Stage 0 (which DeepSpeed's script cannot read) gives
    the module's tensors, and stage 1 includes frozen parameters from the module (DeepSpeed's
    script leaves them out).
    """
    tag_dir = find_checkpoint(checkpoint_dir, tag)
    if tag_dir is None:
        raise CheckpointError(f"{checkpoint_dir} (tag {tag or 'from latest'}) is not a DeepSpeed checkpoint")
    ckpt = read_checkpoint(tag_dir)
    module = module_state(ckpt)
    buffers = set(ckpt.model_state.get("buffer_names") or [])
    shared = ckpt.model_state.get("shared_params") or {}
    frozen_names = set(ckpt.model_state.get("frozen_param_shapes") or {})
    state = OrderedDict((name, _as_fp32(module[name])) for name in module if name in buffers)
    for name, value in module.items():
        if name in buffers or name in shared or name in ckpt.shapes:
            continue
        if not (exclude_frozen_parameters and (name in frozen_names or ckpt.stage > 0)):
            state[name] = _as_fp32(value)
    for name in ckpt.shapes:
        state[name] = ckpt.full_tensor(name) if ckpt.stage > 0 else _as_fp32(module[name])
    for name, first in shared.items():
        if first in state:
            state[name] = state[first]
    return state
