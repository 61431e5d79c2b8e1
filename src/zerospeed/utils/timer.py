"""DeepSpeed's `deepspeed.utils.timer`: named wall-clock timers and a throughput timer with its API.

`SynchronizedWallClockTimer` is zerospeed's `runtime.timers.Timers` (the engine's
`wall_clock_breakdown` timers: synchronize the device, then read the clock) with DeepSpeed's
surface on top: `timers(name).start()/stop()/elapsed()/mean()`, `log(names)`, `get_mean(names)`.
`ThroughputTimer` keeps DeepSpeed's constructor and counters (micro and global steps, samples
per second after `start_step` global steps); zerospeed's engine uses its own smaller one.
The timer-name constants are DeepSpeed's strings, which scripts pass to `engine.timers`.
"""

from __future__ import annotations

import time
from statistics import mean
from typing import Any, Callable

from zerospeed import comm
from zerospeed.accelerator import get_accelerator
from zerospeed.runtime.timers import Timer, Timers
from zerospeed.utils.logging import logger

FORWARD_MICRO_TIMER = "fwd_microstep"
FORWARD_GLOBAL_TIMER = "fwd"
BACKWARD_MICRO_TIMER = "bwd_microstep"
BACKWARD_GLOBAL_TIMER = "bwd"
BACKWARD_INNER_MICRO_TIMER = "bwd_inner_microstep"
BACKWARD_INNER_GLOBAL_TIMER = "bwd_inner"
BACKWARD_REDUCE_MICRO_TIMER = "bwd_allreduce_microstep"
BACKWARD_REDUCE_GLOBAL_TIMER = "bwd_allreduce"
STEP_MICRO_TIMER = "step_microstep"
STEP_GLOBAL_TIMER = "step"
TIME_EPSILON = 1e-6
GB = 1024**3


def _synchronize() -> None:
    get_accelerator().synchronize()


class _IntervalTimer(Timer):
    """zerospeed's Timer keeping each start-stop interval, as DeepSpeed's `mean()` needs them."""

    def __init__(self, name: str) -> None:
        super().__init__(name, _synchronize)
        self.intervals_ms: list[float] = []

    @property
    def started_(self) -> bool:  # DeepSpeed's attribute name
        return self._start is not None

    def start(self) -> None:
        if self.started_:
            raise RuntimeError(f"timer {self.name!r} has already been started")
        super().start()

    def stop(self, reset: bool = False, record: bool = False) -> None:
        if not self.started_:
            raise RuntimeError(f"timer {self.name!r} is not started")
        before = self.elapsed_s
        super().stop()
        self.intervals_ms.append((self.elapsed_s - before) * 1000.0)

    def reset(self) -> float:
        self._start = None
        self.intervals_ms.clear()
        return super().reset()

    def elapsed(self, reset: bool = True) -> float:
        """Milliseconds over the recorded intervals (a running interval is closed and reopened)."""
        running = self.started_
        if running:
            self.stop()
        total = sum(self.intervals_ms)
        if reset:
            self.reset()
        if running:
            self.start()
        return total

    def mean(self) -> float:
        """Mean interval in ms, the fastest and slowest 10% left out."""
        self.elapsed(reset=False)
        return trim_mean(self.intervals_ms, 0.1)


class SynchronizedWallClockTimer(Timers):
    """DeepSpeed's group of named timers (times in milliseconds)."""

    Timer = _IntervalTimer

    def __init__(self) -> None:
        super().__init__(True, _synchronize)

    @property
    def timers(self) -> dict[str, _IntervalTimer]:  # DeepSpeed's attribute
        return self._timers

    def get_timers(self) -> dict[str, _IntervalTimer]:
        return self._timers

    def __call__(self, name: str) -> _IntervalTimer:
        if name not in self._timers:
            self._timers[name] = _IntervalTimer(name)
        return self._timers[name]

    @staticmethod
    def memory_usage() -> str:
        accelerator = get_accelerator()
        return (f" | mem_allocated: {accelerator.memory_allocated() / GB:.4f} GB"
                f" | max_mem_allocated: {accelerator.max_memory_allocated() / GB:.4f} GB"
                f" | cache_allocated: {accelerator.memory_reserved() / GB:.4f} GB")

    def log(self, names: list[str], normalizer: float = 1.0, reset: bool = True, memory_breakdown: bool = False,
            ranks: list[int] | None = None) -> None:
        """Print "time (ms) | name: value" for the named timers that exist, on `ranks` (default rank 0)."""
        if normalizer <= 0.0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        line = "time (ms)" + "".join(f" | {name}: {self._timers[name].elapsed(reset=reset) / normalizer:.2f}"
                                     for name in names if name in self._timers)
        if memory_breakdown:
            line += self.memory_usage()
        if comm.get_rank() in (ranks or [0]):
            print(line, flush=True)

    def get_mean(self, names: list[str], normalizer: float = 1.0, reset: bool = True) -> dict[str, float]:
        """Each named timer's trimmed-mean interval in ms, times 1000 / `normalizer`: DeepSpeed's
        numbers, whose factor 1000 treats the milliseconds as seconds."""
        if normalizer <= 0.0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        return {name: self._timers[name].mean() * 1000.0 / normalizer for name in names if name in self._timers}


class NoopTimer:
    """DeepSpeed's stand-in when timing is off: every timer is one that does nothing."""

    class Timer:
        def start(self) -> None: ...

        def reset(self) -> None: ...

        def stop(self, **kwargs) -> None: ...

        def elapsed(self, **kwargs) -> float:
            return 0

        def mean(self) -> float:
            return 0

    def __init__(self) -> None:
        self.timer = self.Timer()

    def __call__(self, name: str) -> NoopTimer.Timer:
        return self.timer

    def get_timers(self) -> dict:
        return {}

    def log(self, names, normalizer=1.0, reset=True, memory_breakdown=False, ranks=None) -> None: ...

    def get_mean(self, names, normalizer=1.0, reset=True) -> None: ...


class ThroughputTimer:
    """Samples per second over global steps, skipping the first `start_step` of them.

    `config` has `enabled` and `synchronized` (DeepSpeed's timers.throughput section; a dict or
    None for both true). `start()` / `stop(global_step=...)` bracket each micro-step; every
    `steps_per_output` global steps the running and current rates are logged.
    """

    def __init__(self, config: Any, batch_size: int | None, start_step: int = 2, steps_per_output: int | None = None,
                 monitor_memory: bool = False, logging_fn: Callable[[str], None] | None = None) -> None:
        self.enabled = _setting(config, "enabled")
        self.synchronized = _setting(config, "synchronized")
        self.config = config
        self.batch_size = 1 if batch_size is None else batch_size
        self.start_step = start_step
        self.steps_per_output = steps_per_output
        self.monitor_memory = monitor_memory
        self.logging = logging_fn or logger.info
        self.start_time = 0.0
        self.end_time = 0.0
        self.started = False
        self.initialized = False
        self.epoch_count = 0
        self.micro_step_count = 0
        self.global_step_count = 0
        self.total_elapsed_time = 0.0
        self.step_elapsed_time = 0.0

    def update_epoch_count(self) -> None:
        self.epoch_count += 1
        self.micro_step_count = 0

    def start(self) -> None:
        if not self.enabled:
            return
        self.initialized = self.started = True
        if self.global_step_count >= self.start_step:
            if self.synchronized:
                _synchronize()
            self.start_time = time.time()

    def stop(self, global_step: bool = False, report_speed: bool = True) -> None:
        if not self.enabled or not self.started:
            return
        self.started = False
        self.micro_step_count += 1
        if global_step:
            self.global_step_count += 1
        if self.start_time <= 0:
            return
        if self.synchronized:
            _synchronize()
        self.end_time = time.time()
        duration = self.end_time - self.start_time
        self.total_elapsed_time += duration
        self.step_elapsed_time += duration
        if not global_step:
            return
        if report_speed and self.steps_per_output and self.global_step_count % self.steps_per_output == 0:
            self._report()
        self.step_elapsed_time = 0.0

    def _report(self) -> None:
        accelerator = get_accelerator()
        self.logging(f"epoch={self.epoch_count}/micro_step={self.micro_step_count}/global_step={self.global_step_count}, "
                     f"RunningAvgSamplesPerSec={self.avg_samples_per_sec()}, "
                     f"CurrSamplesPerSec={self.batch_size / (self.step_elapsed_time + TIME_EPSILON)}, "
                     f"MemAllocated={round(accelerator.memory_allocated() / GB, 2)}GB, "
                     f"MaxMemAllocated={round(accelerator.max_memory_allocated() / GB, 2)}GB")
        if self.monitor_memory:
            import psutil

            self.logging(f"epoch={self.epoch_count}/micro_step={self.micro_step_count}/"
                         f"global_step={self.global_step_count}, vm %: {psutil.virtual_memory().percent}, "
                         f"swap %: {psutil.swap_memory().percent}")

    def avg_samples_per_sec(self) -> float:
        """Samples per second over the timed global steps; -inf before any was timed
        (DeepSpeed divides by zero there)."""
        timed_steps = self.global_step_count - self.start_step
        if timed_steps <= 0 or self.total_elapsed_time <= 0:
            return float("-inf")
        return self.batch_size / (self.total_elapsed_time / timed_steps)


def _setting(config: Any, key: str) -> bool:
    """A throughput-timer switch from a dict, a config object or None (both default to true)."""
    if config is None:
        return True
    return bool(config.get(key, True) if isinstance(config, dict) else getattr(config, key, True))


def trim_mean(data: list[float], trim_percent: float) -> float:
    """Mean of `data` without the `trim_percent` smallest and largest values (0 for no data)."""
    if not 0.0 <= trim_percent <= 1.0:
        raise ValueError(f"trim_percent must be within [0, 1], got {trim_percent}")
    if not data:
        return 0
    ordered = sorted(data)
    cut = int(round(len(ordered) * trim_percent))
    kept = ordered[cut:len(ordered) - cut]
    return mean(kept) if kept else 0


__all__ = [
    "BACKWARD_GLOBAL_TIMER", "BACKWARD_INNER_GLOBAL_TIMER", "BACKWARD_INNER_MICRO_TIMER", "BACKWARD_MICRO_TIMER",
    "BACKWARD_REDUCE_GLOBAL_TIMER", "BACKWARD_REDUCE_MICRO_TIMER", "FORWARD_GLOBAL_TIMER", "FORWARD_MICRO_TIMER",
    "NoopTimer", "STEP_GLOBAL_TIMER", "STEP_MICRO_TIMER", "SynchronizedWallClockTimer", "ThroughputTimer",
    "trim_mean",
]
