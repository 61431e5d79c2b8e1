"""The engine's flops profiler: profile one forward at `flops_profiler.profile_step` on rank 0, report at the boundary.

As in DeepSpeed, the profiled forward is the first one run while `engine.global_steps ==
profile_step`; the report (summary, aggregated and per-module tree) is printed, or written
to `output_file`, when that step's optimizer step is done. Backward and step latencies come
from the engine's timers (wall_clock_breakdown is on whenever the profiler is).
"""

from __future__ import annotations

import time

from zerospeed.profiling.flops_profiler.profiler import FlopsProfiler
from zerospeed.profiling.flops_profiler.report import duration_to_string, flops_to_string
from zerospeed.runtime.timers import BACKWARD, FORWARD, STEP


def build_flops_profiler(config, engine) -> "EngineFlopsProfiler | None":
    """The profiler for `config.flops_profiler`, on rank 0 only; None when disabled or on other ranks."""
    section = config.flops_profiler
    if not section.enabled or engine.global_rank != 0:
        return None
    return EngineFlopsProfiler(engine, section)


class EngineFlopsProfiler(FlopsProfiler):
    def __init__(self, engine, section) -> None:
        super().__init__(engine.module, ds_engine=engine, recompute_fwd_factor=section.recompute_fwd_factor)
        self.engine = engine
        self.section = section
        self.report_due = False
        self.report_text: str | None = None
        self.flops_per_sample: float | None = None  # forward+backward, known after the report
        self._marks: dict[str, float] = {}

    def on_outermost_forward_done(self) -> None:
        self.stop_profile()  # one forward only; the figures stay until the report
        self.report_due = True

    def after_step(self, boundary: bool) -> None:
        if not boundary:
            return
        if self.report_due:
            self.report_due = False
            self._report()
            self.end_profile()
        if self.engine.global_steps == self.section.profile_step and not self.started:
            self._arm()

    def _arm(self) -> None:
        timers = self.engine.timers
        self._marks = {name: getattr(timers(name), "total_s", 0.0) for name in (FORWARD, BACKWARD, STEP)}
        self._marks["micro_steps"] = self.engine.micro_steps
        self.start_profile()
        self._marks["wall"] = time.perf_counter()  # after start_profile's one-time warm-up

    def _report(self) -> None:
        engine, marks = self.engine, self._marks
        iter_s = time.perf_counter() - marks["wall"]
        micro = max(engine.micro_steps - int(marks["micro_steps"]), 1)
        timers = engine.timers
        delta = {name: getattr(timers(name), "total_s", 0.0) - marks[name] for name in (FORWARD, BACKWARD, STEP)}
        fwd_flops = self.get_total_flops()
        factor = 3.0 + self.recompute_fwd_factor  # forward + backward (2x) + recomputed forward share
        self.flops_per_sample = factor * fwd_flops / max(engine.train_micro_batch_size_per_gpu(), 1)
        lines: list[tuple[str, object]] = [
            ("world size: ", engine.world_size),
            ("data parallel size: ", engine.world_size),
            ("batch size per rank: ", engine.train_micro_batch_size_per_gpu()),
        ]
        if timers.enabled:
            lines += [
                ("bwd latency (per micro-step): ", duration_to_string(delta[BACKWARD] / micro)),
                ("step latency (the optimizer step call): ", duration_to_string(delta[STEP])),
            ]
        lines += [
            (f"iter latency (whole profiled step, {micro} micro-step(s), wall clock): ", duration_to_string(iter_s)),
            (f"FLOPS per rank = {factor:g} * fwd flops * micro-steps / iter latency: ",
             flops_to_string(factor * fwd_flops * micro / iter_s if iter_s else 0)),
            ("samples/second: ", round(engine.train_micro_batch_size_per_gpu() * engine.world_size * micro / iter_s, 2)),
        ]
        self.report_text = self.print_model_profile(
            profile_step=self.section.profile_step, module_depth=self.section.module_depth,
            top_modules=self.section.top_modules, detailed=self.section.detailed,
            output_file=self.section.output_file, extra_lines=lines,
        )
