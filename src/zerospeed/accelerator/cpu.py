"""The CPU accelerator: host memory is the device, gloo is the backend, streams are no-ops."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import psutil

from zerospeed.accelerator.abstract import Accelerator


class _NoStream:
    """Stands in for a CUDA stream on CPU: work is already ordered, so waiting is free."""

    def synchronize(self) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> "_WallClockEvent":
        event = event or _WallClockEvent()
        event.record()
        return event


class _WallClockEvent:
    """Stands in for a CUDA event on CPU: records wall time so elapsed_time still works."""

    def __init__(self, enable_timing: bool = False, **_: Any) -> None:
        self._time: float | None = None

    def record(self, stream: Any = None) -> None:
        self._time = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, stream: Any = None) -> None:
        pass

    def elapsed_time(self, end: "_WallClockEvent") -> float:
        """Milliseconds between this event and `end`, like torch.cuda.Event."""
        if self._time is None or end._time is None:
            raise RuntimeError("elapsed_time needs both events recorded")
        return (end._time - self._time) * 1000.0


class CpuAccelerator(Accelerator):
    name = "cpu"

    def __init__(self) -> None:
        self._peak_rss = 0

    def device_name(self, index: int | None = None) -> str:
        return "cpu"

    def current_device(self) -> int:
        return 0

    def set_device(self, index: int) -> None:
        pass

    def device_count(self) -> int:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

    def communication_backend_name(self) -> str:
        return "gloo"

    def is_bf16_supported(self) -> bool:
        return True

    def is_fp16_supported(self) -> bool:
        return True

    def synchronize(self, index: int | None = None) -> None:
        pass

    def memory_allocated(self, index: int | None = None) -> int:
        rss = psutil.Process().memory_info().rss
        self._peak_rss = max(self._peak_rss, rss)
        return rss

    def max_memory_allocated(self, index: int | None = None) -> int:
        return max(self._peak_rss, _vm_hwm_bytes(), self.memory_allocated())

    def reset_peak_memory_stats(self, index: int | None = None) -> None:
        self._peak_rss = 0
        with contextlib.suppress(OSError):  # resets VmHWM where the kernel allows it
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")

    def total_memory(self, index: int | None = None) -> int:
        return psutil.virtual_memory().total

    def available_memory(self, index: int | None = None) -> int:
        return psutil.virtual_memory().available

    def Stream(self, **kwargs: Any) -> _NoStream:  # noqa: N802
        return _NoStream()

    def Event(self, **kwargs: Any) -> _WallClockEvent:  # noqa: N802
        return _WallClockEvent(**kwargs)

    def stream(self, stream: Any) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def current_stream(self, index: int | None = None) -> _NoStream:
        return _NoStream()


def _vm_hwm_bytes() -> int:
    """Peak resident set size of this process from /proc (0 where /proc is absent)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
