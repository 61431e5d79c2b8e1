"""Resharding at load time: a checkpoint saved by N ranks at stage s loads into M ranks at stage t.

Compares per-parameter full fp32 masters and optimizer states (exp_avg, exp_avg_sq, step)
reconstructed from every rank's pieces on both sides, and the consolidated export against
the in-memory masters. Stage 3 on either side: 3 -> 1, 1 -> 3, 2 -> 4 ranks and back at
stage 3 (its working parameters compared whole, gathered). Launches: save (2 ranks, stages
3/2/1/0), 4 ranks, 2 ranks, 1 rank.
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import test_checkpoint_common as common
from tests.distributed.launcher import run_distributed
from zerospeed.errors import CheckpointError


# Stage 3 with the small parameters persistent and the rest partitioned.
EXTRA = {3: {"zero_optimization": {"stage3_param_persistence_threshold": 40}}}


def _build(stage: int, seed: int):
    return common.build(stage, EXTRA.get(stage), seed=seed)


def _save_four_stages(root: str) -> dict:
    out = {}
    for stage in (3, 2, 1, 0):
        engine = _build(stage, seed=stage)
        common.scramble_rng(stage)
        common.train(engine, 0, 3)
        engine.save_checkpoint(os.path.join(root, f"w2s{stage}"))
        out[stage] = common.state_of(engine)
    return out


def _load_and_save_on_four(root: str) -> dict:
    out = {}
    for stage in (2, 3):
        engine = _build(stage, seed=11)
        engine.load_checkpoint(os.path.join(root, f"w2s{stage}"))
        loaded = common.state_of(engine)
        common.train(engine, 3, 1)
        engine.save_checkpoint(os.path.join(root, f"w4s{stage}"))
        out[stage] = {"loaded": loaded, "saved": common.state_of(engine)}
    return out


def _load_on_two(root: str) -> dict:
    out = {}
    for source, stage in (("w4s2", 2), ("w4s3", 3), ("w2s2", 1), ("w2s1", 0), ("w2s0", 2), ("w2s3", 1), ("w2s1", 3)):
        engine = _build(stage, seed=11)
        engine.load_checkpoint(os.path.join(root, source))
        out[(source, stage)] = common.state_of(engine)
    return out


def _load_on_one(root: str) -> dict:
    engine = common.build(2, seed=11)
    engine.load_checkpoint(os.path.join(root, "w2s2"))
    return common.state_of(engine)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reshard"))
    saved = run_distributed(_save_four_stages, 2, root, timeout=240)
    four = run_distributed(_load_and_save_on_four, 4, root, timeout=240)
    two = run_distributed(_load_on_two, 2, root, timeout=240)
    one = run_distributed(_load_on_one, 1, root, timeout=240)
    return root, saved, four, two, one


def _assert_same_model_state(source_ranks: list[dict], target_ranks: list[dict]) -> None:
    expected, actual = common.assemble(source_ranks), common.assemble(target_ranks)
    assert expected.keys() == actual.keys()
    for name, entry in expected.items():
        assert entry.keys() == actual[name].keys(), name
        for key, value in entry.items():
            assert torch.equal(value, actual[name][key]), f"{name}.{key}"
    for name, value in source_ranks[0]["params"].items():
        assert value.numel() > 0, f"working parameter {name} was not gathered"
        for target in target_ranks:
            assert torch.equal(value, target["params"][name]), f"working parameter {name}"
    assert source_ranks[0]["counters"] == target_ranks[0]["counters"]
    assert source_ranks[0]["lr"] == target_ranks[0]["lr"]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_to_four(matrix, stage):
    _, saved, four, _, _ = matrix
    _assert_same_model_state([r[stage] for r in saved], [r[stage]["loaded"] for r in four])


@pytest.mark.parametrize("stage", [2, 3])
def test_four_ranks_to_two(matrix, stage):
    _, _, four, two, _ = matrix
    _assert_same_model_state([r[stage]["saved"] for r in four], [r[(f"w4s{stage}", stage)] for r in two])


@pytest.mark.parametrize("source_stage,target_stage", [(2, 1), (1, 0), (0, 2), (3, 1), (1, 3)])
def test_stage_change_on_two_ranks(matrix, source_stage, target_stage):
    _, saved, _, two, _ = matrix
    _assert_same_model_state([r[source_stage] for r in saved], [r[(f"w2s{source_stage}", target_stage)] for r in two])


def test_two_ranks_to_one(matrix):
    _, saved, _, _, one = matrix
    _assert_same_model_state([r[2] for r in saved], one)


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidated_equals_in_memory_fp32(matrix, tmp_path, stage):
    from zerospeed.utils.zero_to_fp32 import (convert_zero_checkpoint_to_fp32_state_dict,
                                               get_fp32_state_dict_from_zero_checkpoint)

    root, saved, _, _, _ = matrix
    masters = common.assemble([r[stage] for r in saved])
    state = get_fp32_state_dict_from_zero_checkpoint(os.path.join(root, f"w2s{stage}"))
    params, buffers = saved[0][stage]["params"], saved[0][stage]["buffers"]  # params: gathered at stage 3
    assert set(state) == set(params) | set(buffers)
    for name, value in state.items():
        assert value.dtype == torch.float32
        expected = masters[name]["master"].view(value.shape) if name in masters else {**params, **buffers}[name]
        assert torch.equal(value, expected), name
        assert value.numel() > 0 and torch.equal(value, {**params, **buffers}[name]), name  # fp32: working == master
    written = convert_zero_checkpoint_to_fp32_state_dict(os.path.join(root, f"w2s{stage}"), str(tmp_path / "hf"),
                                                         safe_serialization=True)
    assert written == [str(tmp_path / "hf" / "model.safetensors")]
    exported = load_file(written[0])
    assert exported.keys() == state.keys() and all(torch.equal(exported[k], state[k]) for k in state)


def test_consolidate_cli_sharded_and_bf16(matrix, tmp_path):
    from zerospeed.launcher.cli import SUBCOMMANDS, main

    if "consolidate" not in SUBCOMMANDS:
        pytest.skip("consolidate subcommand not registered")
    root = matrix[0]
    assert main(["consolidate", os.path.join(root, "w2s1"), str(tmp_path / "one.safetensors"), "--dtype", "bf16"]) == 0
    one = load_file(str(tmp_path / "one.safetensors"))
    assert one["up.weight"].dtype == torch.bfloat16
    assert main(["consolidate", os.path.join(root, "w2s1"), str(tmp_path / "dir"), "--safetensors",
                 "--max-shard-size", "2KB"]) == 0
    files = sorted(os.listdir(tmp_path / "dir"))
    assert "model.safetensors.index.json" in files and len(files) > 2
    merged = {}
    for name in files:
        if name.endswith(".safetensors"):
            merged.update(load_file(str(tmp_path / "dir" / name)))
    reference = common_fp32(os.path.join(root, "w2s1"))
    assert merged.keys() == reference.keys() and all(torch.equal(merged[k], reference[k]) for k in merged)
    assert main(["consolidate", os.path.join(root, "nope"), str(tmp_path / "x.bin")]) == 1


def common_fp32(path):
    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(path)


def test_consolidate_unknown_tag_lists_available(matrix):
    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with pytest.raises(CheckpointError, match=r"tag 'nope' not found .*available tags: global_step3"):
        get_fp32_state_dict_from_zero_checkpoint(os.path.join(matrix[0], "w2s2"), tag="nope")
