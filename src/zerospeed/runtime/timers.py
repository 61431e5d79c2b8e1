"""Wall-clock timers for `wall_clock_breakdown` and throughput for `steps_per_print`."""

from __future__ import annotations

import time

import torch

from zerospeed import comm

FORWARD, BACKWARD, REDUCE, STEP = "forward", "backward", "backward_allreduce", "step"


class Timer:
    """Accumulates elapsed wall time between start() and stop() calls."""

    def __init__(self, name: str, synchronize) -> None:
        self.name = name
        self._synchronize = synchronize
        self._start: float | None = None
        self.elapsed_s = 0.0
        self.count = 0
        self.total_s = 0.0  # never reset: observers (monitor events) take differences

    def start(self) -> None:
        self._synchronize()
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        self._synchronize()
        elapsed = time.perf_counter() - self._start
        self.elapsed_s += elapsed
        self.total_s += elapsed
        self.count += 1
        self._start = None

    def reset(self) -> float:
        elapsed, self.elapsed_s, self.count = self.elapsed_s, 0.0, 0
        return elapsed


class Timers:
    """Named timers; `summary()` gives each timer's min/max/mean milliseconds over ranks."""

    def __init__(self, enabled: bool, synchronize) -> None:
        self.enabled = enabled
        self._synchronize = synchronize
        self._timers: dict[str, Timer] = {}
        self._listeners: list = []

    def add_listener(self, listener) -> None:
        """Call `listener(name, started: bool)` at every start/stop, timed or not (memory_breakdown)."""
        self._listeners.append(listener)

    def __call__(self, name: str) -> Timer:
        if name not in self._timers:
            self._timers[name] = Timer(name, self._synchronize if self.enabled else (lambda: None))
        return self._timers[name]

    def start(self, name: str) -> None:
        for listener in self._listeners:
            listener(name, True)
        if self.enabled:
            self(name).start()

    def stop(self, name: str) -> None:
        if self.enabled:
            self(name).stop()
        for listener in self._listeners:
            listener(name, False)

    def summary(self, names: list[str]) -> dict[str, dict[str, float]]:
        """Elapsed ms since the last summary per timer, reduced over ranks (resets them)."""
        local = torch.tensor([self(n).reset() * 1000.0 for n in names], dtype=torch.float64)
        world = comm.get_world_size()
        if world > 1:
            gathered = [torch.empty_like(local) for _ in range(world)]
            comm.all_gather(gathered, local)
            stacked = torch.stack(gathered)
        else:
            stacked = local.unsqueeze(0)
        return {
            name: {"min": float(stacked[:, i].min()), "max": float(stacked[:, i].max()), "mean": float(stacked[:, i].mean())}
            for i, name in enumerate(names)
        }


class ThroughputTimer:
    """Samples per second over optimizer steps, excluding the first `start_step` steps."""

    def __init__(self, batch_size: int, start_step: int = 2) -> None:
        self.batch_size = batch_size
        self.start_step = start_step
        self.steps = 0
        self.total_s = 0.0
        self._step_start: float | None = None

    def start(self) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()

    def stop(self, step_done: bool) -> None:
        if not step_done or self._step_start is None:
            return
        self.steps += 1
        if self.steps > self.start_step:
            self.total_s += time.perf_counter() - self._step_start
        self._step_start = None

    def avg_samples_per_sec(self) -> float:
        counted = self.steps - self.start_step
        return self.batch_size * counted / self.total_s if counted > 0 and self.total_s > 0 else 0.0
