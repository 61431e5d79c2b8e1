"""Profiling: the flops profiler (`zerospeed.profiling.flops_profiler`, DeepSpeed's path), memory breakdown, FLOP/s estimates.

Wall-clock timers for `wall_clock_breakdown` live in `zerospeed.runtime.timers`.
"""
