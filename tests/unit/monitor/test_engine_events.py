"""One-process engine runs: the events the engine writes, memory_breakdown, the engine's flops profiler."""

from __future__ import annotations

import csv

import pytest
import torch

import zerospeed
from tests.distributed.parity import DIM, HIDDEN, SEQ, VOCAB, global_micro_batch, make_model
from zerospeed.runtime.timers import Timers

MICRO, GAS = 4, 2


def train(tmp_path, steps=3, model=None, **extra):
    model = model if model is not None else make_model()
    config = {
        "train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": GAS,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "steps_per_print": 1,
        "csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "job"}, **extra,
    }
    engine, *_ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    losses = []
    for step in range(steps):
        total = torch.zeros(())
        for micro in range(GAS):
            loss = engine(*global_micro_batch(step, micro, MICRO))
            engine.backward(loss)
            engine.step()
            total += loss.detach().float()
        losses.append(float(total) / GAS)
    engine.monitor.close()
    return engine, losses


def read(tmp_path, name):
    with open(tmp_path / "job" / f"{name}.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [(int(s), float(v)) for s, v in rows[1:]]


def test_step_events_loss_lr_throughput_and_timers(tmp_path):
    engine, losses = train(tmp_path, wall_clock_breakdown=True)
    samples = [MICRO * GAS * (i + 1) for i in range(3)]
    header, rows = read(tmp_path, "Train_Samples_train_loss")
    assert header == ["step", "train_loss"]
    assert [s for s, _ in rows] == samples
    assert [v for _, v in rows] == pytest.approx(losses, rel=1e-6)
    _, lr = read(tmp_path, "Train_Samples_lr")
    assert [v for _, v in lr] == pytest.approx([1e-3] * 3)
    _, throughput = read(tmp_path, "Train_Samples_throughput")
    assert [s for s, _ in throughput] == samples[1:] and all(v > 0 for _, v in throughput)
    for phase in ("forward", "backward", "step"):
        _, elapsed = read(tmp_path, f"Train_Samples_elapsed_time_ms_{phase}")
        assert len(elapsed) == 3 and all(v > 0 for _, v in elapsed)
    assert not (tmp_path / "job" / "Train_Samples_loss_scale.csv").exists()  # fp32: no loss scale


def test_fp16_writes_loss_scale(tmp_path):
    engine, _ = train(tmp_path, steps=2, fp16={"enabled": True, "initial_scale_power": 8})
    _, scale = read(tmp_path, "Train_Samples_loss_scale")
    assert [v for _, v in scale] == [engine.loss_scale()] * 2 == [256.0] * 2


def test_user_events_go_through_engine_monitor(tmp_path):
    engine, _ = train(tmp_path, steps=1)
    engine.monitor.write_events([("Eval/accuracy", 0.5, engine.global_samples)])
    engine.monitor.close()
    assert read(tmp_path, "Eval_accuracy") == (["step", "accuracy"], [(MICRO * GAS, 0.5)])


def test_memory_breakdown_per_phase(tmp_path, caplog):
    engine, _ = train(tmp_path, steps=2, memory_breakdown=True)
    for phase in ("forward", "backward", "step"):
        _, allocated = read(tmp_path, f"Train_Memory_{phase}_allocated_MB")
        _, peak = read(tmp_path, f"Train_Memory_{phase}_peak_MB")
        assert len(allocated) == 2 and all(a > 1 for _, a in allocated)  # CPU: process RSS, MB
        assert all(p >= a for (_, p), (_, a) in zip(peak, allocated))


def test_tflops_from_model_tokens(tmp_path):
    model = make_model()
    model.tokens_per_sample = SEQ  # the model tells: 6 x params x tokens per sample
    engine, _ = train(tmp_path, steps=3, model=model)
    params = sum(p.numel() for p in engine.module.parameters())
    _, throughput = read(tmp_path, "Train_Samples_throughput")
    _, tflops = read(tmp_path, "Train_Samples_tflops_per_rank")
    for (_, sps), (_, tf) in zip(throughput, tflops):
        assert tf == pytest.approx(6 * params * SEQ * sps / 1e12)


def tiny_lm_forward_flops(batch: int) -> int:
    tokens = batch * SEQ
    linears = 2 * tokens * (DIM * HIDDEN + HIDDEN * DIM + DIM * DIM)   # up, down, frozen
    logits = 2 * tokens * DIM * VOCAB                                     # h @ embed.weight.t()
    return linears + logits + tokens * HIDDEN + 5 * tokens * DIM + tokens * VOCAB  # gelu, norm, log_softmax


def test_engine_flops_profiler_reports_at_profile_step(tmp_path):
    out = tmp_path / "flops.txt"
    engine, _ = train(tmp_path, steps=4, flops_profiler={"enabled": True, "profile_step": 2, "output_file": str(out),
                                                         "module_depth": 1})
    text = out.read_text()
    assert "Profile Summary at step 2:" in text and "iter latency" in text and "bwd latency" in text
    assert "(up): Linear(" in text
    profiler = engine.flops_profiler
    assert profiler.flops_per_sample == pytest.approx(3 * tiny_lm_forward_flops(MICRO) / MICRO)
    assert not profiler.started and not engine.module._forward_pre_hooks and not hasattr(engine.module, "__flops__")
    _, tflops = read(tmp_path, "Train_Samples_tflops_per_rank")  # the profiler's figure feeds TFLOP/s after step 2
    assert [s for s, _ in tflops] == [MICRO * GAS * 3, MICRO * GAS * 4]


def test_timers_listeners_and_monotonic_total():
    seen = []
    timers = Timers(False, lambda: None)
    timers.add_listener(lambda name, started: seen.append((name, started)))
    timers.start("forward")
    timers.stop("forward")
    assert seen == [("forward", True), ("forward", False)]
    timed = Timers(True, lambda: None)
    timed.start("step")
    timed.stop("step")
    total = timed("step").total_s
    timed("step").reset()
    assert timed("step").elapsed_s == 0 and timed("step").total_s == total > 0
