"""What the engine reports at each optimizer step: monitor events, FLOP/s, memory and the flops profile.

`StepObserver(engine)` is built once by the engine; it needs `engine.monitor` (a
MonitorMaster) and `engine.flops_profiler` (or None). The engine calls `record_loss(loss)`
at each backward and `after_step(boundary)` at each step. At a boundary, rank 0 writes, at
`global_samples`:
  Train/Samples/train_loss      mean of rank 0's micro-batch losses of the step (no collective)
  Train/Samples/lr              first param group's learning rate
  Train/Samples/loss_scale      fp16 only
  Train/Samples/throughput      samples/s of the whole job, from the wall time between boundaries
  Train/Samples/tflops_per_rank when FLOPs per sample are known (model or flops profiler)
  Train/Samples/elapsed_time_ms_{forward,backward,step}   with wall_clock_breakdown (rank 0's time)
  Train/Memory/{phase}_{allocated,peak}_MB               with memory_breakdown
"""

from __future__ import annotations

import time

import torch

from zerospeed.profiling.memory import MemoryBreakdown
from zerospeed.profiling.throughput import model_flops_per_sample, tflops_per_rank
from zerospeed.runtime.timers import BACKWARD, FORWARD, STEP
from zerospeed.utils.logging import log_dist


class StepObserver:
    def __init__(self, engine) -> None:
        self.engine = engine
        config = engine._config
        self.monitor = engine.monitor
        self.profiler = getattr(engine, "flops_profiler", None)
        self.writes = self.monitor.enabled and engine.global_rank == 0
        self.memory = MemoryBreakdown(engine.accelerator) if config.memory_breakdown else None
        if self.memory is not None:
            engine.timers.add_listener(self.memory.on_phase)
        told = model_flops_per_sample(engine.module)
        self.flops_per_sample, self.flops_source = told if told else (None, None)
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._last_boundary: float | None = None
        self._timer_marks: dict[str, float] = {}
        self.samples_per_sec: float | None = None

    def record_loss(self, loss: torch.Tensor) -> None:
        """Remember this micro-batch's loss (as given to backward) for the step's train_loss event."""
        if not self.writes:
            return
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def after_step(self, boundary: bool) -> None:
        if self.profiler is not None:
            self.profiler.after_step(boundary)
            if self.flops_per_sample is None and self.profiler.flops_per_sample:
                self.flops_per_sample, self.flops_source = self.profiler.flops_per_sample, "flops profiler"
        if not boundary:
            return
        now = time.perf_counter()
        if self._last_boundary is not None and now > self._last_boundary:
            self.samples_per_sec = self.engine.train_batch_size() / (now - self._last_boundary)
        self._last_boundary = now
        if self.writes:
            self.monitor.write_events(self._events())
        self._loss_sum, self._loss_count = None, 0
        engine = self.engine
        if engine._config.steps_per_print and engine.global_steps % engine._config.steps_per_print == 0:
            self._log()
        if self.memory is not None:
            self.memory.reset()

    def _events(self) -> list[tuple[str, float, int]]:
        engine = self.engine
        samples = engine.global_samples
        events = []
        if self._loss_count:
            events.append(("Train/Samples/train_loss", float(self._loss_sum) / self._loss_count, samples))
        lrs = engine.get_lr()
        if lrs:
            events.append(("Train/Samples/lr", float(lrs[0]), samples))
        if engine.fp16_enabled():
            events.append(("Train/Samples/loss_scale", float(engine.loss_scale()), samples))
        if self.samples_per_sec is not None:
            events.append(("Train/Samples/throughput", self.samples_per_sec, samples))
            if self.flops_per_sample:
                tflops = tflops_per_rank(self.flops_per_sample, self.samples_per_sec, engine.world_size)
                events.append(("Train/Samples/tflops_per_rank", tflops, samples))
        if engine.timers.enabled:
            for name in (FORWARD, BACKWARD, STEP):
                total = getattr(engine.timers(name), "total_s", 0.0)
                events.append((f"Train/Samples/elapsed_time_ms_{name}",
                               (total - self._timer_marks.get(name, 0.0)) * 1000.0, samples))
                self._timer_marks[name] = total
        if self.memory is not None:
            events += self.memory.events(samples)
        return events

    def _log(self) -> None:
        if self.flops_per_sample and self.samples_per_sec:
            tflops = tflops_per_rank(self.flops_per_sample, self.samples_per_sec, self.engine.world_size)
            log_dist(f"step={self.engine.global_steps} throughput {self.samples_per_sec:.1f} samples/s, "
                     f"{tflops:.4f} TFLOP/s per rank (FLOPs per sample: {self.flops_source})")
        if self.memory is not None:
            log_dist(f"step={self.engine.global_steps} {self.memory.describe(self.engine.memory_report())}")
