"""Pipeline engine checkpoints: every stage's layers are saved and an exact resume follows.

2 stages x 1 data rank (and x 2, on 4 ranks: one writer per stage), with the embedding tied to the LM head across the first and last
stage: train, save, train on; fresh processes load and train the same batches -> identical
losses and parameters (bitwise, fp32 on CPU), every stage's module tensors on disk once.
"""

import json
import os

import pytest
import torch

from tests.distributed.launcher import run_distributed
from tests.distributed import test_pipeline_parity as pipe

SAVE_AT, MORE, MICRO, GAS = 2, 3, 2, 2


def _engine(seed_offset: int = 0):
    import zerospeed
    from zerospeed.pipe import PipelineModule

    module = PipelineModule(pipe.layer_specs(), num_stages=2, loss_fn=pipe.loss_fn, seed_layers=True,
                            base_seed=pipe.BASE_SEED + seed_offset, partition_method="uniform")
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS, "gradient_clipping": pipe.CLIP,
              "optimizer": {"type": "AdamW", "params": {"lr": pipe.LR, "weight_decay": 0.01}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_max_lr": pipe.LR, "warmup_num_steps": 4}},
              "steps_per_print": 1000}
    engine, *_ = zerospeed.initialize(model=module, model_parameters=module.parameters(), config=config)
    return engine


def _train(engine, first: int, steps: int) -> list[float]:
    dp, dp_rank = engine.grid.get_data_parallel_world_size(), engine.grid.get_data_parallel_rank()
    return [float(engine.train_batch(pipe.data_iter(step, MICRO, GAS, dp, dp_rank))) for step in range(first, first + steps)]


def _params(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def _first(root: str):
    engine = _engine()
    _train(engine, 0, SAVE_AT)
    engine.save_checkpoint(root, client_state={"stage": engine.stage_id})
    at_save = _params(engine)
    losses = _train(engine, SAVE_AT, MORE)
    return losses, _params(engine), at_save


def _wrong_stage_count(root: str):
    import zerospeed
    from zerospeed.errors import CheckpointError
    from zerospeed.pipe import PipelineModule

    module = PipelineModule(pipe.layer_specs(), num_stages=1, loss_fn=pipe.loss_fn, partition_method="uniform")
    engine, *_ = zerospeed.initialize(model=module, model_parameters=module.parameters(),
                                      config={"train_micro_batch_size_per_gpu": MICRO, "steps_per_print": 1000,
                                              "optimizer": {"type": "AdamW", "params": {"lr": pipe.LR}}})
    try:
        engine.load_checkpoint(root)
    except CheckpointError as error:
        return str(error)
    return None


def _resumed(root: str):
    engine = _engine(seed_offset=17)  # other initial weights: all must come from the checkpoint
    path, client_state = engine.load_checkpoint(root)
    counters = (engine.global_steps, engine.micro_steps)
    losses = _train(engine, SAVE_AT, MORE)
    return losses, _params(engine), client_state, counters, path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipe-ckpt"))
    first = run_distributed(_first, 2, root, timeout=240)
    resumed = run_distributed(_resumed, 2, root, timeout=240)
    wrong = run_distributed(_wrong_stage_count, 2, root, timeout=240)
    return root, first, resumed, wrong


def test_pipeline_resume_is_bitwise_identical_on_every_stage(runs):
    root, first, resumed, _ = runs
    for stage in range(2):
        losses, params, _ = first[stage]
        losses2, params2, client_state, counters, path = resumed[stage]
        assert path == os.path.join(root, f"global_step{SAVE_AT}")
        assert client_state == {"stage": 0}  # rank 0's, as DeepSpeed returns
        assert counters == (SAVE_AT, SAVE_AT * GAS)
        assert losses2 == losses
        assert params2.keys() == params.keys()
        for name, value in params.items():
            assert torch.equal(params2[name], value), (stage, name)


def test_every_stages_module_tensors_are_on_disk_and_consolidate(runs):
    from safetensors import safe_open

    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, first, _, _ = runs
    tag_dir = os.path.join(root, f"global_step{SAVE_AT}")
    with open(os.path.join(tag_dir, "manifest.json")) as f:
        manifest = json.load(f)
    saved = {**first[0][2], **first[1][2]}  # the tied embedding is on both stages, equal
    assert set(manifest["module_tensors"]) == set(saved)
    assert manifest["minor_version"] == 2 and manifest["pipeline"]["num_stages"] == 2
    for stage in range(2):
        assert set(manifest["pipeline"]["stage_tensors"][str(stage)]) == set(first[stage][2])
        file = "model.safetensors" if stage == 0 else "model-stage001.safetensors"
        with safe_open(os.path.join(tag_dir, file), framework="pt") as handle:
            for name in handle.keys():
                assert torch.equal(handle.get_tensor(name), first[stage][2][name]), (stage, name)
    consolidated = get_fp32_state_dict_from_zero_checkpoint(root)
    assert set(consolidated) == set(saved)
    for name, value in saved.items():
        assert torch.equal(consolidated[name], value), name


def test_loading_into_another_number_of_stages_names_both(runs):
    _, _, _, wrong = runs
    for message in wrong:
        assert message is not None and "pipeline of 2 stages" in message and "this engine has 1" in message


@pytest.mark.slow
def test_two_stages_two_data_ranks_resume_bitwise(tmp_path):
    root = str(tmp_path)
    first = run_distributed(_first, 4, root, timeout=300)
    resumed = run_distributed(_resumed, 4, root, timeout=300)
    for rank in range(4):
        assert resumed[rank][0] == first[rank][0]
        for name, value in first[rank][1].items():
            assert torch.equal(resumed[rank][1][name], value), (rank, name)
    with open(os.path.join(root, f"global_step{SAVE_AT}", "manifest.json")) as f:
        manifest = json.load(f)
    assert sorted(manifest["shards"]) == ["0", "1", "2", "3"] and set(manifest["pipeline"]["stage_tensors"]) == {"0", "1"}
