"""DeepSpeed's flops profiler import path: `zerospeed.profiling.flops_profiler`."""

from zerospeed.profiling.flops_profiler.profiler import *  # noqa: F401,F403
from zerospeed.profiling.flops_profiler.profiler import FlopsProfiler, get_model_profile, __all__  # noqa: F401
