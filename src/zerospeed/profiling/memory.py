"""memory_breakdown: allocated and peak memory of each engine phase (forward, backward, step) on this rank.

Fed by the engine's Timers (a listener on every phase start/stop): at a phase's start the
accelerator's peak counter is reset, at its stop `memory_allocated()` and
`max_memory_allocated()` are read. On CUDA these are the caching allocator's figures; on
CPU the accelerator reports the process RSS and its high-water mark.
"""

from __future__ import annotations

from zerospeed.runtime.timers import BACKWARD, FORWARD, STEP

PHASES = (FORWARD, BACKWARD, STEP)
MB = 1024.0 * 1024.0


class MemoryBreakdown:
    """Per phase over the current accumulation window: last allocated bytes and peak bytes."""

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.allocated: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def on_phase(self, name: str, started: bool) -> None:
        if name not in PHASES:
            return
        if started:
            self.accelerator.reset_peak_memory_stats()
            return
        self.allocated[name] = self.accelerator.memory_allocated()
        self.peak[name] = max(self.peak.get(name, 0), self.accelerator.max_memory_allocated())

    def snapshot(self) -> dict[str, dict[str, int]]:
        """`{phase: {"allocated": bytes, "peak": bytes}}` for the phases seen since the last reset."""
        return {p: {"allocated": self.allocated[p], "peak": self.peak[p]} for p in PHASES if p in self.allocated}

    def reset(self) -> None:
        self.allocated.clear()
        self.peak.clear()

    def events(self, step: int) -> list[tuple[str, float, int]]:
        events = []
        for phase, figures in self.snapshot().items():
            events.append((f"Train/Memory/{phase}_allocated_MB", figures["allocated"] / MB, step))
            events.append((f"Train/Memory/{phase}_peak_MB", figures["peak"] / MB, step))
        return events

    def describe(self, model_states: dict[str, int] | None = None) -> str:
        """One log line: per phase allocated/peak MB, then the model states by category."""
        parts = [f"{phase} {f['allocated'] / MB:.1f}/{f['peak'] / MB:.1f}" for phase, f in self.snapshot().items()]
        text = "memory MB allocated/peak: " + (" | ".join(parts) if parts else "no phase timed yet")
        if model_states:
            states = ", ".join(f"{k} {v / MB:.1f}" for k, v in model_states.items())
            text += f"; model states MB: {states}"
        return text
