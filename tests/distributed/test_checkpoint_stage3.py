"""Module weights of a ZeRO stage-3 checkpoint: the module file holds only what no fp32 master
holds (the frozen layer, buffers; never an empty placeholder), trainable weights are rebuilt
from the master pieces, tied weights stored once; the save gathers only the frozen unit and
the load moves no weights between ranks; module-only load into the shards, `save_16bit_model`
(still full weights), consolidation, and a tied stage-3 checkpoint loaded at stage 1.

One 2-rank launch; every stage-3 parameter is partitioned (persistence threshold 0).
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import test_checkpoint_common as common
from tests.distributed.launcher import run_distributed
from tests.distributed.parity import DIM, VOCAB, TinyLM

STAGE3 = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


class TiedLM(TinyLM):
    """TinyLM with an LM head whose weight *is* the embedding's (two state-dict names, one Parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, DIM))

    def forward(self, tokens, targets, use_sometimes=False):
        h = self.embed(tokens) * self.scale
        h = h + self.down(torch.nn.functional.gelu(self.up(h)))
        h = h + 0.1 * self.frozen(h)
        if use_sometimes:
            h = h + self.sometimes(h)
        logits = self.head(self.norm(h))
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))


def tied_model(seed: int) -> TiedLM:
    torch.manual_seed(seed)
    return TiedLM()


def _collectives(fn) -> dict[str, dict[str, int]]:
    """{op: {"calls", "bytes"}} of the tensor collectives `fn` issued on this rank (comm's counters)."""
    from zerospeed import comm

    comm.comm_log.reset()
    fn()
    return {op: counts for op, counts in comm.comm_log.totals().items() if not op.endswith("_object") and op != "barrier"}


def _run(root: str) -> dict:
    engine = common.build(3, STAGE3, model=tied_model(0))
    common.train(engine, 0, 3)
    save_ops = _collectives(lambda: engine.save_checkpoint(os.path.join(root, "tied")))
    engine.save_16bit_model(os.path.join(root, "export"), "model.safetensors")
    engine.save_16bit_model(os.path.join(root, "export"))  # pytorch_model.bin
    out = {"saved": common.state_of(engine), "save_ops": save_ops,
           "released": all(p.data.numel() == 0 for p in engine.module.parameters()),
           "frozen_unit_numel": engine.module.frozen.weight._zs_unit.layout.gathered_numel}

    resumed = common.build(3, STAGE3, seed=7, model=tied_model(7))
    out["load_ops"] = _collectives(lambda: resumed.load_checkpoint(os.path.join(root, "tied")))
    out["resumed"] = common.state_of(resumed)

    fresh = common.build(3, STAGE3, seed=7, model=tied_model(7))
    fresh.load_checkpoint(os.path.join(root, "tied"), load_module_only=True)
    out["module_only"] = common.state_of(fresh)
    out["module_only_loss"] = common.train(fresh, 3, 1)  # the loaded shards train (no optimizer state)

    stage1 = common.build(1, seed=7, model=tied_model(7))
    stage1.load_checkpoint(os.path.join(root, "tied"))
    out["stage1"] = common.state_of(stage1)
    return out


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stage3ckpt"))
    return root, run_distributed(_run, 2, root, timeout=240)


def _gathered(ranks) -> dict[str, torch.Tensor]:
    params = ranks[0]["saved"]["params"]
    assert all(p.numel() > 0 for p in params.values())
    assert ranks[0]["saved"]["stage"] == 3 and all(r["released"] for r in ranks)  # really partitioned
    return params


def test_module_file_holds_only_what_no_master_holds(tied):
    root, ranks = tied
    params = _gathered(ranks)
    tag_dir = os.path.join(root, "tied", "global_step3")
    with open(os.path.join(tag_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["zero_stage"] == 3 and (manifest["version"], manifest["minor_version"]) == (1, 1)
    assert manifest["module_ties"] == {"head.weight": "embed.weight"}
    frozen = {"frozen.weight", "frozen.bias"}
    trainable = set(params) - frozen
    # Every trainable tensor is rebuilt from master pieces (the tied pair: one piece, under either name).
    in_shards = manifest["module_tensors_in_shards"]
    assert set(in_shards) == trainable
    assert all(in_shards[n] == n for n in trainable - {"embed.weight"}) and in_shards["embed.weight"] in ("embed.weight", "head.weight")
    model = load_file(os.path.join(tag_dir, "model.safetensors"))
    assert set(model) == frozen | {"scale"}
    for name in frozen:
        assert torch.equal(model[name], params[name]), name  # gathered whole, never a placeholder
    assert torch.equal(model["scale"], torch.linspace(0.5, 1.5, DIM))
    # On disk: the frozen layer and the buffer, a header, and nothing else.
    payload = sum(model[n].numel() * model[n].element_size() for n in model)
    assert os.path.getsize(os.path.join(tag_dir, "model.safetensors")) < payload + 1024
    assert payload < sum(params[n].numel() * 4 for n in trainable) / 4
    # The manifest still describes every module tensor.
    for name, value in params.items():
        assert manifest["module_tensors"][name] == {"shape": list(value.shape), "dtype": "float32"}, name
    assert manifest["module_tensors"]["head.weight"] == manifest["module_tensors"]["embed.weight"]


def test_save_gathers_only_the_frozen_unit(tied):
    _, ranks = tied
    for result in ranks:
        ops = result["save_ops"]
        assert set(ops) == {"all_gather_into_tensor"}, ops
        assert ops["all_gather_into_tensor"]["calls"] == 1  # the frozen layer's unit, nothing trainable
        assert ops["all_gather_into_tensor"]["bytes"] == 4 * result["frozen_unit_numel"]


def test_load_moves_no_weights_between_ranks(tied):
    _, ranks = tied
    for result in ranks:
        assert result["load_ops"] == {}, result["load_ops"]  # no all-gather, no broadcast of weights
    expected = common.assemble([r["saved"] for r in ranks])
    actual = common.assemble([r["resumed"] for r in ranks])
    assert expected.keys() == actual.keys()
    for name, entry in expected.items():
        for key, value in entry.items():
            assert torch.equal(value, actual[name][key]), f"{name}.{key}"
    for result in ranks:
        for name, value in _gathered(ranks).items():
            assert torch.equal(result["resumed"]["params"][name], value), name
        assert result["resumed"]["counters"] == ranks[0]["saved"]["counters"]


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_save_16bit_model_loads_into_plain_torch(tied, filename):
    root, ranks = tied
    params = _gathered(ranks)
    path = os.path.join(root, "export", filename)
    state = load_file(path) if filename.endswith(".safetensors") else torch.load(path, weights_only=True)
    plain = tied_model(123)
    plain.load_state_dict(state, strict=True)
    assert plain.head.weight is plain.embed.weight
    for name, value in plain.named_parameters(remove_duplicate=False):
        assert torch.equal(value.detach(), params[name.replace("head.", "embed.")]), name


def test_module_only_load_writes_the_shards(tied):
    _, ranks = tied
    params = _gathered(ranks)
    for rank_result in ranks:
        loaded = rank_result["module_only"]
        for name, value in params.items():
            assert torch.equal(loaded["params"][name], value), name
        assert loaded["counters"]["global_steps"] == 0  # module only: counters untouched
    # refresh_master_from_working(): every rank's fp32 master pieces hold the loaded weights
    masters = common.assemble([r["module_only"] for r in ranks])
    trainable = {n for n in params if not n.startswith("frozen.")}
    assert {n.replace("head.", "embed.") for n in masters} == trainable  # the tied pair: one piece, either name
    for name, entry in masters.items():
        value = params[name.replace("head.", "embed.")]
        assert torch.equal(entry["master"].view(value.shape), value), name
    assert all(loss == loss for loss in ranks[0]["module_only_loss"])  # trains on from the loaded shards


def test_consolidated_tied_stage3_equals_gathered(tied):
    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, ranks = tied
    params = _gathered(ranks)
    state = get_fp32_state_dict_from_zero_checkpoint(os.path.join(root, "tied"))
    assert set(state) == set(ranks[0]["saved"]["params"]) | {"head.weight", "scale"}
    for name, value in params.items():
        assert torch.equal(state[name], value), name
    assert torch.equal(state["head.weight"], params["embed.weight"])


def test_tied_stage3_checkpoint_loads_at_stage1(tied):
    _, ranks = tied
    expected = common.assemble([r["saved"] for r in ranks])
    actual = common.assemble([r["stage1"] for r in ranks])
    assert expected.keys() == actual.keys()
    for name, entry in expected.items():
        for key, value in entry.items():
            assert torch.equal(value, actual[name][key]), f"{name}.{key}"
    for name, value in _gathered(ranks).items():
        assert torch.equal(ranks[0]["stage1"]["params"][name], value), name
