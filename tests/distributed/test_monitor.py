"""Monitors on 2 ranks: what rank 0 wrote (CSV, TensorBoard, W&B offline) equals the engine's losses and lrs; plot it."""

from __future__ import annotations

import csv
import glob
import os

import pytest

from tests.distributed.launcher import run_distributed
from tests.distributed.parity import global_micro_batch, make_model, use_sometimes

STEPS, MICRO, GAS, WORLD = 5, 2, 2, 2


def monitored_run(out_dir: str, with_wandb: bool) -> dict:
    """Train the parity TinyLM with every local monitor on; return this rank's losses, lrs and facts."""
    import torch

    import zerospeed
    from zerospeed import comm

    rank = comm.get_rank()
    config = {
        "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS, "steps_per_print": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 3e-3,
                                                     "warmup_num_steps": 4}},
        "wall_clock_breakdown": True,
        "zero_optimization": {"stage": 1},
        "csv_monitor": {"enabled": True, "output_path": out_dir, "job_name": "csv"},
        "tensorboard": {"enabled": True, "output_path": out_dir, "job_name": "tb"},
        "wandb": {"enabled": with_wandb, "project": "zerospeed-test"},
    }
    model = make_model()
    engine, *_ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    losses, lrs = [], []
    for step in range(STEPS):
        total = torch.zeros(())
        for micro in range(GAS):
            tokens, targets = global_micro_batch(step, micro, MICRO * WORLD)
            mine = slice(rank * MICRO, (rank + 1) * MICRO)
            loss = engine(tokens[mine], targets[mine], use_sometimes(step))
            engine.backward(loss)
            engine.step()
            total += loss.detach().float()
        losses.append(float(total) / GAS)  # this rank's mean micro-batch loss of the step
        lrs.append(engine.get_lr()[0])
    engine.monitor.write_events([("Eval/rank", float(rank), engine.global_samples)])
    engine.monitor.close()
    return {"losses": losses, "lrs": lrs, "monitors": sorted(engine.monitor.monitors),
            "samples": engine.global_samples}


def _csv(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [(int(s), float(v)) for s, v in rows[1:]]


def test_rank0_monitor_files_equal_engine_losses_and_lrs_then_plot(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb") is not None
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    results = run_distributed(monitored_run, WORLD, str(tmp_path), wandb, env=env, timeout=240)
    rank0, rank1 = results
    assert rank0["monitors"] == sorted(["csv_monitor", "tensorboard"] + (["wandb"] if wandb else []))
    assert rank1["monitors"] == []
    samples = [MICRO * GAS * WORLD * (i + 1) for i in range(STEPS)]

    header, loss_rows = _csv(tmp_path / "csv" / "Train_Samples_train_loss.csv")
    assert header == ["step", "train_loss"] and [s for s, _ in loss_rows] == samples
    assert [v for _, v in loss_rows] == pytest.approx(rank0["losses"], rel=1e-6)
    assert rank0["losses"] != pytest.approx(rank1["losses"])  # rank 0's own batches, as DeepSpeed
    _, lr_rows = _csv(tmp_path / "csv" / "Train_Samples_lr.csv")
    assert [(s, v) for s, v in lr_rows] == list(zip(samples, rank0["lrs"]))
    _, user_rows = _csv(tmp_path / "csv" / "Eval_rank.csv")
    assert user_rows == [(samples[-1], 0.0)]  # only rank 0 wrote its event
    _, fwd = _csv(tmp_path / "csv" / "Train_Samples_elapsed_time_ms_forward.csv")
    assert len(fwd) == STEPS

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    tb_loss = accumulator.Scalars("Train/Samples/train_loss")
    assert [e.step for e in tb_loss] == samples
    assert [e.value for e in tb_loss] == pytest.approx(rank0["losses"], rel=1e-6)
    assert [e.value for e in accumulator.Scalars("Train/Samples/lr")] == pytest.approx(rank0["lrs"], rel=1e-6)
    assert len(glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))) == 1

    if wandb:
        runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(runs) == 1 and os.path.getsize(runs[0]) > 0

    from zerospeed.launcher.cli import main

    out = tmp_path / "plot.png"
    assert main(["plot", str(tmp_path), "-o", str(out)]) == 0  # finds the one job holding CSVs
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
