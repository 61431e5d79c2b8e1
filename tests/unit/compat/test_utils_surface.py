"""DeepSpeed's small utilities: recursive_getattr/setattr (also from compression.helper),
OnDevice, the timers of deepspeed.utils.timer and the pipeline timer names."""

from __future__ import annotations

import time

import pytest
import torch

import zerospeed
from zerospeed.utils import timer as timer_module
from zerospeed.utils.timer import NoopTimer, SynchronizedWallClockTimer, ThroughputTimer, trim_mean


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        self.register_buffer("scale", torch.ones(2))


def test_recursive_getattr_and_setattr():
    from zerospeed.compression.helper import recursive_getattr, recursive_setattr

    assert recursive_getattr is zerospeed.utils.recursive_getattr
    block = Block()
    assert recursive_getattr(block, "inner.0.weight") is block.inner[0].weight
    assert recursive_getattr(block, "inner") is block.inner and recursive_getattr(block, "scale") is block.scale
    replacement = torch.nn.Linear(4, 2, bias=False)
    recursive_setattr(block, "inner.2", replacement)
    assert block.inner[2] is replacement and dict(block.named_modules())["inner.2"] is replacement
    recursive_setattr(block, "inner", torch.nn.Identity())
    assert isinstance(block.inner, torch.nn.Identity) and "inner.0.weight" not in dict(block.named_parameters())
    with pytest.raises(AttributeError):
        recursive_getattr(block, "inner.missing")


def test_on_device_builds_on_meta_in_the_dtype():
    with zerospeed.OnDevice(dtype=torch.float16, device="meta"):
        block = Block()
        token_ids = torch.zeros(5, dtype=torch.int64)
        explicit = torch.ones(2, dtype=torch.float32)
    tensors = dict(block.named_parameters()) | dict(block.named_buffers())
    assert sorted(tensors) == ["inner.0.bias", "inner.0.weight", "inner.2.bias", "inner.2.weight", "scale"]
    assert all(t.device.type == "meta" and t.dtype == torch.float16 for t in tensors.values())
    assert sum(p.numel() for p in block.parameters()) == 3 * 4 + 4 + 4 * 2 + 2
    assert token_ids.device.type == "meta" and token_ids.dtype == torch.int64
    assert explicit.dtype == torch.float32  # an explicit dtype is kept (DeepSpeed would cast it)
    assert torch.get_default_dtype() == torch.float32 and torch.zeros(1).device.type == "cpu"


def test_on_device_nesting_disabling_and_errors():
    with zerospeed.OnDevice(dtype=torch.bfloat16, device="cpu"):
        outer = torch.empty(2)
        with zerospeed.OnDevice(dtype=None, device="meta"):
            inner = torch.empty(2)
        after = torch.empty(2)
    assert (outer.device.type, outer.dtype) == ("cpu", torch.bfloat16)
    assert (inner.device.type, inner.dtype) == ("meta", torch.bfloat16)
    assert (after.device.type, after.dtype) == ("cpu", torch.bfloat16)
    with zerospeed.OnDevice(dtype=torch.float16, device="meta", enabled=False):
        untouched = torch.nn.Linear(2, 2)
    assert untouched.weight.device.type == "cpu" and untouched.weight.dtype == torch.float32
    with pytest.raises(ZeroDivisionError), zerospeed.OnDevice(dtype=torch.float64, device="meta"):
        1 / 0  # noqa: B018
    assert torch.get_default_dtype() == torch.float32 and torch.empty(1).device.type == "cpu"
    with pytest.raises(TypeError, match="floating-point"):
        zerospeed.OnDevice(dtype=torch.int8)


class _Clock:
    """A scripted perf_counter / time: each call returns the next value."""

    def __init__(self, values) -> None:
        self.values = iter(values)

    def __call__(self) -> float:
        return next(self.values)


def test_wall_clock_timer_numbers(monkeypatch, capsys):
    # three intervals of 10, 20 and 60 ms
    monkeypatch.setattr(time, "perf_counter", _Clock([0.0, 0.010, 1.0, 1.020, 2.0, 2.060]))
    timers = SynchronizedWallClockTimer()
    forward = timers("fwd")
    assert timers("fwd") is forward and timers.get_timers() == {"fwd": forward} == timers.timers
    for _ in range(3):
        forward.start()
        forward.stop()
    with pytest.raises(RuntimeError, match="not started"):
        forward.stop()
    assert forward.elapsed(reset=False) == pytest.approx(90.0)
    assert forward.mean() == pytest.approx(30.0)  # 10% of 3 rounds to 0 trimmed
    assert timers.get_mean(["fwd", "absent"], normalizer=2.0) == {"fwd": pytest.approx(15000.0)}
    timers.log(["fwd", "absent"], normalizer=3.0)
    assert capsys.readouterr().out == "time (ms) | fwd: 30.00\n"
    assert forward.elapsed() == 0.0 and forward.intervals_ms == []  # log reset it


def test_wall_clock_timer_elapsed_while_running(monkeypatch):
    monkeypatch.setattr(time, "perf_counter", _Clock([0.0, 0.005, 0.006, 0.010]))
    timer = SynchronizedWallClockTimer()("step")
    timer.start()
    with pytest.raises(RuntimeError, match="already been started"):
        timer.start()
    assert timer.elapsed() == pytest.approx(5.0)  # closed at 5 ms, reset, reopened at 6 ms
    assert timer.started_
    timer.stop()
    assert timer.elapsed() == pytest.approx(4.0)


def test_throughput_timer_numbers(monkeypatch):
    # 5 global steps of one micro-step each, 0.5 s apiece; steps 1 and 2 are warm-up
    ticks = iter([10.0, 10.5, 11.0, 11.5, 12.0, 12.5])
    monkeypatch.setattr(time, "time", lambda: next(ticks))
    messages = []
    meter = ThroughputTimer({"enabled": True, "synchronized": False}, batch_size=8, start_step=2,
                            steps_per_output=5, logging_fn=messages.append)
    assert meter.avg_samples_per_sec() == float("-inf")
    for _ in range(5):
        meter.start()
        meter.stop(global_step=True)
    assert (meter.global_step_count, meter.micro_step_count) == (5, 5)
    assert meter.total_elapsed_time == pytest.approx(1.5)
    assert meter.avg_samples_per_sec() == pytest.approx(16.0)
    assert len(messages) == 1 and "global_step=5" in messages[0] and "RunningAvgSamplesPerSec=16" in messages[0]
    disabled = ThroughputTimer({"enabled": False}, batch_size=8)
    disabled.start()
    disabled.stop(global_step=True)
    assert disabled.global_step_count == 0


def test_noop_timer_and_trim_mean():
    noop = NoopTimer()
    noop("x").start()
    noop("x").stop(record=True)
    assert noop("x").elapsed(reset=True) == 0 and noop.get_timers() == {} and noop.log(["x"]) is None
    assert trim_mean([], 0.1) == 0
    assert trim_mean([100.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, -50.0], 0.1) == pytest.approx(4.5)


def test_timer_names_are_deepspeeds():
    from zerospeed.runtime.pipe import engine as pipe_engine

    assert (timer_module.FORWARD_MICRO_TIMER, timer_module.FORWARD_GLOBAL_TIMER) == ("fwd_microstep", "fwd")
    assert (timer_module.BACKWARD_REDUCE_MICRO_TIMER, timer_module.STEP_GLOBAL_TIMER) == ("bwd_allreduce_microstep", "step")
    assert (pipe_engine.BATCH_INPUT_TIMER, pipe_engine.TRAIN_BATCH_TIMER, pipe_engine.PIPE_SEND_OUTPUT_TIMER,
            pipe_engine.PIPE_SEND_GRAD_TIMER, pipe_engine.PIPE_RECV_INPUT_TIMER, pipe_engine.PIPE_RECV_GRAD_TIMER) == (
        "batch_input", "train_batch", "pipe_send_output", "pipe_send_grad", "pipe_recv_input", "pipe_recv_grad")
