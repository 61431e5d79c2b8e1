"""Profiling: the flops profiler (`zerospeed.profiling.flops_profiler`, DeepSpeed's path), memory breakdown, FLOP/s estimates.

Wall-clock timers for `wall_clock_breakdown` live in `zerospeed.runtime.timers`.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    """`deepspeed.profiling.flops_profiler` style attribute access without an explicit import."""
    if name in ("flops_profiler", "memory", "throughput"):
        return importlib.import_module(f"zerospeed.profiling.{name}")
    raise AttributeError(f"module 'zerospeed.profiling' has no attribute {name!r}")
