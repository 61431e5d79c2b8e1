"""Exact resume: train, save, train on; fresh processes load and train the same steps -> identical numbers.

Bitwise (==, torch.equal) in fp32, bf16 and fp16 on CPU, for stages 0-3 (stage 3: whole
parameters gathered for the comparison), CPU offload, stage 3 with shards and masters on
NVMe, and an async save taken while training continues. Two launches cover every variant.
"""

import json
import os

import pytest
import torch

from tests.distributed import test_checkpoint_common as common
from tests.distributed.launcher import run_distributed

SAVE_AT, MORE = 3, 3
VARIANTS = {
    "stage0": (0, {}),
    "stage1": (1, {}),
    "stage2": (2, {}),
    "stage2-bf16": (2, {"bf16": {"enabled": True}}),
    "stage2-fp16": (2, {"fp16": {"enabled": True, "initial_scale_power": 24, "loss_scale_window": 2}}),
    "stage2-offload": (2, {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300,
                                                 "offload_optimizer": {"device": "cpu"}}}),
    "stage1-async": (1, {}),
    # Stage 3: some parameters partitioned (empty .data outside a gather), the small ones persistent.
    "stage3": (3, {"zero_optimization": {"stage3_param_persistence_threshold": 40}}),
    "stage3-bf16": (3, {"bf16": {"enabled": True}, "zero_optimization": {"stage3_param_persistence_threshold": 0}}),
    "stage3-offload": (3, {"zero_optimization": {"stage3_param_persistence_threshold": 0,
                                                 "offload_optimizer": {"device": "cpu"},
                                                 "offload_param": {"device": "cpu"}}}),
    # Shards (the frozen layer's too) and masters in swap files: the load writes chunks into swapped shards.
    "stage3-nvme": (3, {"zero_optimization": {
        "stage3_param_persistence_threshold": 40, "sub_group_size": 300,
        "offload_optimizer": {"device": "nvme", "nvme_path": "{swap}"},
        "offload_param": {"device": "nvme", "nvme_path": "{swap}", "max_in_cpu": 0, "buffer_size": 1000}}}),
}


def _with_swap(extra: dict, root: str) -> dict:
    """`extra` with "{swap}" replaced by a swap directory under `root`."""
    swap = os.path.join(root, "swap")
    os.makedirs(swap, exist_ok=True)
    return json.loads(json.dumps(extra).replace("{swap}", swap))


def _first_run(root: str) -> dict:
    out = {}
    for name, (stage, extra) in VARIANTS.items():
        engine = common.build(stage, _with_swap(extra, root))
        common.scramble_rng(1)
        common.train(engine, 0, SAVE_AT)
        engine.save_checkpoint(os.path.join(root, name), client_state={"note": name, "step": SAVE_AT},
                               async_save=name.endswith("async"))
        losses = common.train(engine, SAVE_AT, MORE)
        engine.wait_for_checkpoint()
        out[name] = (losses, common.state_of(engine))
    return out


def _resumed_run(root: str) -> dict:
    out = {}
    for name, (stage, extra) in VARIANTS.items():
        engine = common.build(stage, _with_swap(extra, root), seed=7)  # initial weights differ: all must come from the checkpoint
        common.scramble_rng(99)
        path, client_state = engine.load_checkpoint(os.path.join(root, name))
        counters_after_load = common.state_of(engine)["counters"]
        losses = common.train(engine, SAVE_AT, MORE)
        out[name] = (losses, common.state_of(engine), path, client_state, counters_after_load)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume"))
    first = run_distributed(_first_run, 2, root, timeout=240)
    resumed = run_distributed(_resumed_run, 2, root, timeout=240)
    return root, first, resumed


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resume_is_bitwise_identical(runs, variant):
    root, first, resumed = runs
    for rank in range(2):
        losses, state = first[rank][variant]
        losses2, state2, path, client_state, counters = resumed[rank][variant]
        assert path == os.path.join(root, variant, f"global_step{SAVE_AT}")
        assert client_state == {"note": variant, "step": SAVE_AT}
        assert counters["global_steps"] == SAVE_AT and counters["micro_steps"] == SAVE_AT
        assert losses2 == losses
        for name, value in state["params"].items():
            assert value.numel() > 0, f"rank {rank} parameter {name} was not gathered"
            assert torch.equal(value, state2["params"][name]), f"rank {rank} parameter {name}"
        for (n, _, s, e, master, opt), (n2, _, s2, e2, master2, opt2) in zip(state["pieces"], state2["pieces"]):
            assert (n, s, e) == (n2, s2, e2)
            assert torch.equal(master, master2), f"rank {rank} master {n}[{s}:{e}]"
            assert opt.keys() == opt2.keys() and all(torch.equal(opt[k], opt2[k]) for k in opt), f"state of {n}"
        assert state["counters"] == state2["counters"]
        assert state["lr"] == state2["lr"]
        assert state["scale"] == state2["scale"]


def test_fp16_variant_exercised_the_loss_scaler(runs):
    _, first, _ = runs
    _, state = first[0]["stage2-fp16"]
    assert state["counters"]["skipped_steps"] > 0  # the scaler's state (and skips) cross the checkpoint


def test_checkpoint_files_on_disk(runs):
    root, _, _ = runs
    tag_dir = os.path.join(root, "stage2", f"global_step{SAVE_AT}")
    assert sorted(os.listdir(tag_dir)) == ["engine_state.pt", "manifest.json", "model.safetensors",
                                           "rank00000.safetensors", "rank00001.safetensors"]
    with open(os.path.join(root, "stage2", "latest")) as f:
        assert f.read() == f"global_step{SAVE_AT}"
    assert not [n for n in os.listdir(os.path.join(root, "stage2")) if n.startswith(".")]
