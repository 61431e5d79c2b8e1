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


# -- frozen parameters left out, custom_load_fn, non-strict, format 1.0 ------------------------------
class WiderLM(TiedLM):
    """TiedLM plus a layer the checkpoint does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = torch.nn.Linear(DIM, 3)


def _as_format_1_0(tag_dir: str, out_dir: str) -> None:
    """A copy of `tag_dir` as zerospeed wrote stage-3 checkpoints before 1.1: every module tensor
    (trainable ones too, in the model dtype) in the module file, no minor_version."""
    import shutil
    import zlib

    from zerospeed.checkpoint.consolidate import Consolidator
    from zerospeed.checkpoint.files import write_safetensors

    shutil.copytree(tag_dir, out_dir)
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    with Consolidator(os.path.dirname(tag_dir), os.path.basename(tag_dir)) as consolidator:
        full = {name: consolidator.tensor(name) for name in manifest["module_tensors"]
                if name not in manifest["module_ties"]}
    write_safetensors(os.path.join(out_dir, "model.safetensors"), full)
    data = open(os.path.join(out_dir, "model.safetensors"), "rb").read()
    manifest["files"]["model.safetensors"] = {"bytes": len(data), "crc32": f"{zlib.crc32(data):08x}"}
    del manifest["minor_version"], manifest["module_tensors_in_shards"]
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def _run_variants(root: str) -> dict:
    from zerospeed import comm
    from zerospeed.errors import CheckpointError

    engine = common.build(3, STAGE3, model=tied_model(0))
    common.train(engine, 0, 3)
    engine.save_checkpoint(os.path.join(root, "nofrozen"), exclude_frozen_parameters=True)
    engine.save_checkpoint(os.path.join(root, "full"))
    out = {"saved": common.state_of(engine)}
    if comm.get_rank() == 0:
        _as_format_1_0(os.path.join(root, "full", "global_step3"), os.path.join(root, "v1_0", "global_step3"))
    comm.barrier()

    nofrozen = common.build(3, STAGE3, seed=7, model=tied_model(7))
    frozen_before = common.full_params(nofrozen)
    nofrozen.load_checkpoint(os.path.join(root, "nofrozen"))
    out["nofrozen"] = {"before": frozen_before, "after": common.state_of(nofrozen), "loss": common.train(nofrozen, 3, 1)}

    seen = {}

    def custom(src, dst):
        seen.update({name: (tuple(value.shape), value.dtype) for name, value in src.items()})
        dst.load_state_dict(src, strict=True)

    custom_engine = common.build(3, STAGE3, seed=7, model=tied_model(7))
    custom_engine.load_checkpoint(os.path.join(root, "full"), custom_load_fn=custom)
    out["custom"] = {"src": seen, "state": common.state_of(custom_engine)}

    torch.manual_seed(7)
    wider = common.build(3, STAGE3, seed=7, model=WiderLM())
    extra_before = common.full_params(wider)
    try:
        wider.load_checkpoint(os.path.join(root, "full"))
        out["strict_error"] = None
    except CheckpointError as error:
        out["strict_error"] = str(error)
    wider.load_checkpoint(os.path.join(root, "full"), load_module_strict=False)
    out["non_strict"] = {"before": extra_before, "after": common.full_params(wider)}

    for label, stage, module_only in (("v1_0_stage3", 3, False), ("v1_0_module_only", 3, True), ("v1_0_stage1", 1, False)):
        target = common.build(stage, STAGE3 if stage == 3 else None, seed=7, model=tied_model(7))
        target.load_checkpoint(os.path.join(root, "v1_0"), load_module_only=module_only)
        out[label] = common.state_of(target)
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return run_distributed(_run_variants, 2, str(tmp_path_factory.mktemp("stage3variants")), timeout=240)


def _assert_same_weights_and_masters(saved: list[dict], loaded: list[dict], masters: bool = True) -> None:
    for rank_saved, rank_loaded in zip(saved, loaded):
        for name, value in rank_saved["params"].items():
            assert torch.equal(rank_loaded["params"][name], value), name
    if masters:
        expected, actual = common.assemble(saved), common.assemble(loaded)
        assert expected.keys() == actual.keys()
        for name, entry in expected.items():
            for key, value in entry.items():
                assert torch.equal(value, actual[name][key]), f"{name}.{key}"


def test_exclude_frozen_parameters_keeps_the_loading_models_frozen_layer(variants):
    for result in variants:
        before, after = result["nofrozen"]["before"], result["nofrozen"]["after"]["params"]
        for name, value in result["saved"]["params"].items():
            expected = before[name] if name.startswith("frozen.") else value
            assert torch.equal(after[name], expected), name
        assert all(loss == loss for loss in result["nofrozen"]["loss"])


def test_custom_load_fn_gets_whole_tensors_rebuilt_from_the_masters(variants):
    for result in variants:
        src = result["custom"]["src"]
        assert set(src) == set(result["saved"]["params"]) | {"head.weight", "scale"}
        for name, value in result["saved"]["params"].items():
            assert src[name] == (tuple(value.shape), torch.float32), name
    _assert_same_weights_and_masters([r["saved"] for r in variants], [r["custom"]["state"] for r in variants], False)


def test_strict_error_names_the_missing_layer_and_non_strict_keeps_it(variants):
    for result in variants:
        assert "missing from the checkpoint (2): extra.bias, extra.weight" in result["strict_error"]
        before, after = result["non_strict"]["before"], result["non_strict"]["after"]
        for name in ("extra.weight", "extra.bias"):
            assert torch.equal(after[name], before[name]), name
        for name, value in result["saved"]["params"].items():
            assert torch.equal(after[name], value), name


@pytest.mark.parametrize("label", ["v1_0_stage3", "v1_0_module_only", "v1_0_stage1"])
def test_format_1_0_checkpoint_still_loads(variants, label):
    _assert_same_weights_and_masters([r["saved"] for r in variants], [r[label] for r in variants],
                                     masters=label != "v1_0_module_only")
