"""Pipeline misuse fails with a message that says what to do, on every rank, without hanging."""

from __future__ import annotations

from tests.distributed.launcher import run_distributed
from tests.distributed.test_pipeline_parity import VOCAB, layer_specs, loss_fn

CONFIG = {
    "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "steps_per_print": 1000,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
}


def _message(fn) -> str:
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return f"{type(error).__name__}: {error}"
    return "no error"


def _batches(seq: int, count: int = 2):
    import torch

    for m in range(count):
        tokens = torch.randint(0, VOCAB, (2, seq + 1), generator=torch.Generator().manual_seed(m))
        yield tokens[:, :-1], tokens[:, 1:]


def error_checks() -> dict[str, str]:
    import torch

    import zerospeed
    from zerospeed.pipe import PipelineModule

    found: dict[str, str] = {}

    def build(stages=2, zero_stage=0, **module_kwargs):
        module = PipelineModule(layer_specs(), num_stages=stages, partition_method="uniform", **module_kwargs)
        config = {**CONFIG, "zero_optimization": {"stage": zero_stage}}
        return zerospeed.initialize(model=module, model_parameters=module.parameters(), config=config)[0]

    found["zero2"] = _message(lambda: build(zero_stage=2, loss_fn=loss_fn))
    engine = build(loss_fn=loss_fn)
    found["forward"] = _message(lambda: engine(torch.zeros(2, 5, dtype=torch.long)))
    found["backward"] = _message(lambda: engine.backward(torch.zeros(())))
    found["step"] = _message(engine.step)
    found["first"] = _message(lambda: engine.train_batch(_batches(5)))
    found["shape"] = _message(lambda: engine.train_batch(_batches(6)))
    engine.reset_activation_shape()
    found["renegotiated"] = _message(lambda: engine.train_batch(_batches(6)))

    dynamic = build(loss_fn=loss_fn, dynamic_shape=True)
    found["dynamic"] = _message(lambda: [dynamic.train_batch(_batches(seq)) for seq in (5, 7, 3)])

    dataset = torch.utils.data.TensorDataset(*[torch.cat(t) for t in zip(*_batches(5, 4))])
    module = PipelineModule(layer_specs(), num_stages=2, loss_fn=loss_fn, partition_method="uniform")
    fed, *_ = zerospeed.initialize(model=module, model_parameters=module.parameters(), config=CONFIG, training_data=dataset)
    found["training_data"] = _message(lambda: [fed.train_batch() for _ in range(3)])

    one_stage = build(stages=1)  # no loss_fn: the last stage outputs logits
    found["no_loss_fn"] = _message(lambda: one_stage.train_batch(_batches(5)))
    return found


def test_misuse_is_reported_on_every_rank():
    results = run_distributed(error_checks, 2, timeout=240, comm_timeout=30)
    for rank, found in enumerate(results):
        assert found["zero2"].startswith("ConfigError") and "zero_optimization.stage=2 cannot be used with pipeline" in found["zero2"]
        for call in ("forward", "backward", "step"):
            assert found[call].startswith("PipelineError") and "train_batch()" in found[call], found[call]
        assert found["first"] == "no error"
        assert found["shape"].startswith("PipelineError"), (rank, found["shape"])
        assert "(2, 5, 12) float32 (grad)" in found["shape"] and "(2, 6, 12) float32 (grad)" in found["shape"]
        assert "dynamic_shape=True" in found["shape"] and "reset_activation_shape()" in found["shape"]
        assert found["renegotiated"] == found["dynamic"] == found["training_data"] == "no error"
        assert found["no_loss_fn"].startswith("PipelineError") and "loss_fn" in found["no_loss_fn"]
        assert f"(2, 5, {VOCAB})" in found["no_loss_fn"]
