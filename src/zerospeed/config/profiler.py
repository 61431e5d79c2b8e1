"""flops_profiler and timers sections: what is measured and printed during training."""

from __future__ import annotations

from typing import Optional

from ._base import Bool, ConfigModel, Float, Int


class FlopsProfilerConfig(ConfigModel):
    """Profile one step's FLOPs/latency per module (DeepSpeed profiling/config.py)."""

    section = "flops_profiler"
    enabled: Bool = False
    recompute_fwd_factor: Float(ge=0.0) = 0.0
    profile_step: Int(ge=1) = 1
    module_depth: Int() = -1
    top_modules: Int(ge=1) = 1
    detailed: Bool = True
    output_file: Optional[str] = None


class ThroughputTimerConfig(ConfigModel):
    section = "timers.throughput"
    enabled: Bool = True
    synchronized: Bool = True


class TimersConfig(ConfigModel):
    section = "timers"
    throughput: ThroughputTimerConfig = ThroughputTimerConfig()
