"""Reading DeepSpeed 0.19.8 checkpoint directories (tests/fixtures/deepspeed_ckpt) in one process, without DeepSpeed.

The fixtures carry DeepSpeed's own answers: its full fp32 weights and Adam states per
parameter (`safe_get_full_*`) and what its `zero_to_fp32` script returned. Here: the
stand-in unpickler with `import deepspeed` failing, the reassembled weights and Adam
states at stages 0-3 (fp32, bf16, round-robin, the bf16 optimizer), the
`get_fp32_state_dict_from_zero_checkpoint` dispatch, and the refusals (model-parallel,
pipeline, MoE, NVMe-swapped, incomplete directories), each naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from zerospeed.checkpoint import deepspeed_format, foreign_pickle
from zerospeed.errors import CheckpointError

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "fixtures", "deepspeed_ckpt")
ALL = ["s0_fp32", "s0_bf16", "s1_fp32", "s1_bf16", "s2_bf16", "s3_fp32", "s3_bf16"]
ZERO = [name for name in ALL if not name.startswith("s0")]


def _expected(name: str) -> tuple[dict, dict]:
    with open(os.path.join(FIXTURES, name, "expected.json")) as f:
        return load_file(os.path.join(FIXTURES, name, "expected.safetensors")), json.load(f)


def _tag_dir(name: str) -> str:
    return os.path.join(FIXTURES, name, "global_step3")


@pytest.fixture
def no_deepspeed(monkeypatch):
    """`import deepspeed` raises, as on a machine without it."""
    for module in [m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "deepspeed", None)


@pytest.fixture
def copy_of(tmp_path):
    def make(name: str) -> str:
        target = tmp_path / name
        shutil.copytree(os.path.join(FIXTURES, name), target)
        return str(target)
    return make


# -- unpickling without DeepSpeed --------------------------------------------------------------
def test_plain_torch_load_needs_deepspeed(no_deepspeed):
    path = os.path.join(_tag_dir("s1_fp32"), "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ImportError):
        torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("name", ALL)
def test_every_fixture_file_unpickles_without_deepspeed(no_deepspeed, name):
    for file in sorted(os.listdir(_tag_dir(name))):
        state = foreign_pickle.load_checkpoint_file(os.path.join(_tag_dir(name), file))
        assert isinstance(state, dict) and state["ds_version"] == "0.19.8"
    assert "deepspeed" not in [m for m in sys.modules if sys.modules[m] is not None]


def test_stand_ins_keep_what_the_pickle_held(no_deepspeed):
    path = os.path.join(_tag_dir("s1_fp32"), "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    state = foreign_pickle.load_checkpoint_file(path)
    optimizer = state["optimizer_state_dict"]
    stage = optimizer["zero_stage"]  # ZeroStageEnum.optimizer_states, pickled as ZeroStageEnum(1)
    assert isinstance(stage, foreign_pickle.ForeignObject)
    assert stage.foreign_path() == "deepspeed.runtime.zero.config.ZeroStageEnum" and int(stage) == 1
    scaler = optimizer["loss_scaler"]
    assert scaler.foreign_name == "LossScaler" and scaler.cur_scale == 1.0 and scaler.dynamic is False
    fragment = next(iter(optimizer["param_slice_mappings"][0].values()))
    assert {"numel", "start"} <= set(fragment.state)
    copied = pickle.loads(pickle.dumps(scaler))  # client_state may hold stand-ins and travel between processes
    assert type(copied) is type(scaler) and copied.state == scaler.state
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        scaler.missing


# -- finding and reading ----------------------------------------------------------------------
def test_find_checkpoint(tmp_path):
    assert deepspeed_format.find_checkpoint(os.path.join(FIXTURES, "s3_fp32")) == _tag_dir("s3_fp32")
    assert deepspeed_format.find_checkpoint(os.path.join(FIXTURES, "s3_fp32"), "global_step3") == _tag_dir("s3_fp32")
    assert deepspeed_format.find_checkpoint(os.path.join(FIXTURES, "s3_fp32"), "global_step9") is None
    assert deepspeed_format.find_checkpoint(str(tmp_path)) is None  # no latest: not ours to decide
    assert deepspeed_format.find_checkpoint(str(tmp_path / "missing")) is None
    zerospeed_tag = tmp_path / "ours" / "step1"
    zerospeed_tag.mkdir(parents=True)
    (zerospeed_tag / "manifest.json").write_text("{}")
    (zerospeed_tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    (tmp_path / "ours" / "latest").write_text("step1")
    assert deepspeed_format.find_checkpoint(str(tmp_path / "ours")) is None  # a manifest wins


@pytest.mark.parametrize("name", ZERO)
def test_partitions_reassemble_to_deepspeeds_weights_and_adam_states(no_deepspeed, name):
    tensors, facts = _expected(name)
    ckpt = deepspeed_format.read_checkpoint(_tag_dir(name))
    assert (ckpt.stage, ckpt.world_size) == (facts["stage"], 2)
    trainable = {key.partition(".")[2] for key in tensors if key.startswith("fp32.")}
    assert set(ckpt.shapes) == trainable
    for param in trainable:
        assert torch.equal(ckpt.full_tensor(param), tensors[f"fp32.{param}"]), param
        for key in ("exp_avg", "exp_avg_sq"):
            full = torch.full((ckpt.shapes[param].numel(),), float("nan"))
            for index in ckpt.by_name[param]:
                fragment = ckpt.fragments[index]
                full[fragment.start : fragment.end] = ckpt.fragment_values(index, key)
            assert torch.equal(full.view(ckpt.shapes[param]), tensors[f"{key}.{param}"]), f"{param} {key}"
    assert all(float(source.state["step"]) == facts["adam_step"] for source in ckpt.sources)
    assert ckpt.param_groups is not None and [g["weight_decay"] for g in ckpt.param_groups] == [0.05, 0.0]
    assert ckpt.group_of["up.bias"] == 1 and ckpt.group_of["up.weight"] == 0


@pytest.mark.parametrize("name", ["s0_fp32", "s0_bf16"])
def test_stage0_state_is_named_by_the_loaders_param_groups(name):
    tensors, facts = _expected(name)
    shapes = {key.partition(".")[2]: tuple(value.shape) for key, value in tensors.items() if key.startswith("fp32.")}
    groups = [["embed.weight", "up.weight", "down.weight"], ["up.bias", "down.bias", "norm.weight", "norm.bias"]]
    ckpt = deepspeed_format.read_checkpoint(_tag_dir(name), [[(n, shapes[n]) for n in g] for g in groups])
    for param in shapes:
        (index,) = ckpt.by_name[param]
        assert torch.equal(ckpt.fragment_values(index).view(shapes[param]), tensors[f"fp32.{param}"]), param
        assert torch.equal(ckpt.fragment_values(index, "exp_avg").view(shapes[param]), tensors[f"exp_avg.{param}"])
    wrong_order = [[(n, shapes[n]) for n in reversed(g)] for g in groups]
    with pytest.raises(CheckpointError, match="param groups differ"):
        deepspeed_format.read_checkpoint(_tag_dir(name), wrong_order)


@pytest.mark.parametrize("name", ALL)
def test_fp32_state_dict_is_deepspeeds_zero_to_fp32(no_deepspeed, name):
    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tensors, facts = _expected(name)
    state = get_fp32_state_dict_from_zero_checkpoint(os.path.join(FIXTURES, name))
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in state.values())
    assert torch.equal(state["head.weight"], state["embed.weight"])
    script = {key.partition(".")[2]: value for key, value in tensors.items() if key.startswith("zero_to_fp32.")}
    if facts["zero_to_fp32"] == "ok":
        # DeepSpeed's script leaves stage-1 frozen parameters out (it saves no frozen_param_shapes there)
        assert set(state) - set(script) == ({"frozen.weight", "frozen.bias"} if facts["stage"] == 1 else set())
        for key, value in script.items():
            assert torch.equal(state[key], value.float()), key
    else:  # stage 0 and the bf16 optimizer, which DeepSpeed's script cannot read
        assert not script
        for key, value in state.items():
            fp32 = tensors.get(f"fp32.{'embed.weight' if key == 'head.weight' else key}")  # tied
            expected = fp32 if fp32 is not None and facts["stage"] > 0 else tensors[f"module.{key}"].float()
            assert torch.equal(value, expected), key
    assert list(state)[0] == "position"  # DeepSpeed's order: buffers first
    excluded = get_fp32_state_dict_from_zero_checkpoint(os.path.join(FIXTURES, name), exclude_frozen_parameters=True)
    assert ("frozen.weight" in excluded) == (facts["stage"] == 0)  # stage 0 records no frozen names


# -- layouts the fixtures do not cover: rewritten from them the way DeepSpeed writes them -----------
def _rewrite(path: str, change) -> None:
    state = foreign_pickle.load_checkpoint_file(path)
    change(state)
    torch.save(state, path + ".new")  # not in place: the loaded tensors map the old file
    os.replace(path + ".new", path)


def _check_against_expected(ckpt, tensors: dict, keys=("exp_avg", "exp_avg_sq")) -> None:
    for param, shape in ckpt.shapes.items():
        for key in ("master", *keys):
            full = torch.full((shape.numel(),), float("nan"))
            for index in ckpt.by_name[param]:
                fragment = ckpt.fragments[index]
                full[fragment.start : fragment.end] = ckpt.fragment_values(index, key)
            expected = tensors[f"{'fp32' if key == 'master' else key}.{param}"]
            assert torch.equal(full.view(shape), expected), f"{param} {key}"


def test_stage0_fused_fp16_optimizer_layout(copy_of):
    """FP16_Optimizer with a fused optimizer: one flat fp32 tensor and one state per param group."""
    root = copy_of("s0_bf16")

    def fuse(state):
        wrapper = state["optimizer"]
        torch_state = wrapper["optimizer_state_dict"]
        groups, new_state = wrapper.pop("fp32_groups"), {}
        for index, (masters, group) in enumerate(zip(groups, torch_state["param_groups"])):
            states = [torch_state["state"][i] for i in group["params"]]
            new_state[index] = {"step": states[0]["step"],
                                **{k: torch.cat([s[k].reshape(-1) for s in states]) for k in ("exp_avg", "exp_avg_sq")}}
            group["params"] = [index]
        wrapper["fp32_groups_flat"] = [torch.cat([m.reshape(-1) for m in masters]) for masters in groups]
        torch_state["state"] = new_state

    _rewrite(os.path.join(root, "global_step3", "mp_rank_00_model_states.pt"), fuse)
    tensors, facts = _expected("s0_bf16")
    shapes = {key.partition(".")[2]: tuple(value.shape) for key, value in tensors.items() if key.startswith("fp32.")}
    groups = [["embed.weight", "up.weight", "down.weight"], ["up.bias", "down.bias", "norm.weight", "norm.bias"]]
    ckpt = deepspeed_format.read_checkpoint(os.path.join(root, "global_step3"),
                                            [[(n, shapes[n]) for n in g] for g in groups])
    assert len(ckpt.sources) == 2
    _check_against_expected(ckpt, tensors)


def test_stage1_elastic_checkpoint_layout(copy_of):
    """`elastic_checkpoint: true`: per-group states without padding, `step` beside them."""
    root = copy_of("s1_bf16")
    tag_dir = os.path.join(root, "global_step3")

    def make_elastic(state):
        optimizer = state["optimizer_state_dict"]
        base = optimizer["base_optimizer_state"]
        lean = []
        for group, padding in zip(base["param_groups"], optimizer["group_paddings"]):
            saved = dict(base["state"][group["params"][0]])
            optimizer["base_optimizer_state_step"] = saved.pop("step")
            lean.append({k: v[: v.numel() - padding] for k, v in saved.items()})
        optimizer["base_optimizer_state"] = lean

    for rank in (0, 1):
        _rewrite(os.path.join(tag_dir, f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"), make_elastic)
    tensors, facts = _expected("s1_bf16")
    ckpt = deepspeed_format.read_checkpoint(tag_dir)
    _check_against_expected(ckpt, tensors)
    assert all(float(source.state["step"]) == facts["adam_step"] for source in ckpt.sources)
    assert ckpt.param_groups is None  # an elastic checkpoint keeps no hyperparameters


def test_dynamic_fp16_loss_scale_is_carried_over():
    from types import SimpleNamespace

    from zerospeed.checkpoint.deepspeed_load import _load_loss_scale
    from zerospeed.runtime.precision import LossScaler

    scaler = foreign_pickle.stand_in("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler")()
    scaler.__setstate__({"cur_scale": 1024.0, "cur_iter": 57, "last_overflow_iter": 40, "cur_hysteresis": 1,
                         "scale_window": 1000, "dynamic": True})
    saved = deepspeed_format._scaler_state(scaler)
    ours = SimpleNamespace(loss_scaler=LossScaler(cur_scale=65536.0, dynamic=True))
    _load_loss_scale(ours, saved)
    assert ours.loss_scaler.state_dict() == {"cur_scale": 1024.0, "cur_iter": 57, "last_overflow_iter": 40,
                                             "cur_hysteresis": 1}
    static = SimpleNamespace(loss_scaler=LossScaler(cur_scale=1.0))
    _load_loss_scale(static, saved)  # a static (bf16/fp32) engine keeps its scale
    assert static.loss_scaler.cur_scale == 1.0


# -- what is refused ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, what", [
    ("mp_rank_01_model_states.pt", "tensor/model-parallel rank 1"),
    ("zero_pp_rank_0_mp_rank_01_optim_states.pt", "tensor/model-parallel rank 1"),
    ("layer_01-model_00-model_states.pt", "pipeline-parallel"),
    ("layer_0_expert_3_mp_rank_00_model_states.pt", "mixture-of-experts"),
    ("expp_rank_0_mp_rank_00_optim_states.pt", "mixture-of-experts"),
    ("offloaded_tensors/", "NVMe"),
])
def test_unsupported_layouts_are_named(copy_of, extra, what):
    root = copy_of("s1_fp32")
    path = os.path.join(root, "global_step3", extra)
    if extra.endswith("/"):
        os.makedirs(path)
    else:
        shutil.copy(os.path.join(root, "global_step3", "mp_rank_00_model_states.pt"), path)
    with pytest.raises(CheckpointError, match=what) as caught:
        deepspeed_format.read_checkpoint(os.path.join(root, "global_step3"))
    assert extra.rstrip("/") in str(caught.value)


def test_missing_rank_file_is_named(copy_of):
    root = copy_of("s3_fp32")
    os.remove(os.path.join(root, "global_step3", "zero_pp_rank_1_mp_rank_00_optim_states.pt"))
    with pytest.raises(CheckpointError, match="saved by 2 ranks but holds 1 optimizer-states files"):
        deepspeed_format.read_checkpoint(os.path.join(root, "global_step3"))
    os.remove(os.path.join(root, "global_step3", "zero_pp_rank_0_mp_rank_00_model_states.pt"))
    with pytest.raises(CheckpointError, match=r"lacks the model-states files of ranks \[0\]"):
        deepspeed_format.read_checkpoint(os.path.join(root, "global_step3"))


def test_unknown_partition_layout_is_refused(copy_of):
    root = copy_of("s1_fp32")
    path = os.path.join(root, "global_step3", "zero_pp_rank_1_mp_rank_00_optim_states.pt")

    def grow(state):
        partitions = state["optimizer_state_dict"]["single_partition_of_fp32_groups"]
        partitions[0] = torch.cat([partitions[0], torch.zeros(4)])

    _rewrite(path, grow)
    with pytest.raises(CheckpointError, match="an unknown DeepSpeed layout") as caught:
        deepspeed_format.read_checkpoint(os.path.join(root, "global_step3"))
    assert path in str(caught.value)


def test_not_a_deepspeed_directory():
    with pytest.raises(CheckpointError, match="is not a DeepSpeed checkpoint"):
        deepspeed_format.fp32_state_dict(os.path.join(FIXTURES, "s1_fp32"), tag="global_step9")


@pytest.mark.parametrize("name", ["s1_fp32", "s3_bf16"])
def test_consolidate_command_exports_a_deepspeed_checkpoint(no_deepspeed, name, tmp_path):
    """`zerospeed consolidate` (and convert_zero_checkpoint_to_*) on a DeepSpeed directory: the
    same tensors as get_fp32_state_dict_from_zero_checkpoint, cast to --dtype."""
    from zerospeed.launcher.cli import main
    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    expected = get_fp32_state_dict_from_zero_checkpoint(os.path.join(FIXTURES, name))
    out = tmp_path / "model.safetensors"
    assert main(["consolidate", os.path.join(FIXTURES, name), str(out), "--dtype", "bf16"]) == 0
    written = load_file(str(out))
    assert list(written) == list(expected)
    for key, value in expected.items():
        assert torch.equal(written[key], value.to(torch.bfloat16) if value.is_floating_point() else value), key
