"""The fetch order of the last micro-step, used to prefetch units and to keep soon-reused ones.

Every request to fetch a unit is recorded with its phase (forward or backward). The next
micro-step compares its requests with the record: while they match, the units that come
next are known and can be gathered ahead of time; at the first mismatch the schedule is
off track and fetching falls back to on demand for the rest of the micro-step, which then
becomes the new record. A wrong prediction therefore costs only time, never correctness.
"""

from __future__ import annotations

FORWARD, BACKWARD = "forward", "backward"


class FetchSchedule:
    def __init__(self) -> None:
        self.recorded: list[tuple[object, str]] = []
        self.current: list[tuple[object, str]] = []
        self.on_track = False

    def begin(self) -> None:
        """A new micro-step starts (the outermost forward)."""
        if self.current:
            self.recorded = self.current
        self.current = []
        self.on_track = bool(self.recorded)

    def end(self) -> None:
        """The micro-step ended (backward done): its requests are the record from now on."""
        if self.current:
            self.recorded = self.current
        self.current = []
        self.on_track = False

    def record(self, unit, phase: str) -> None:
        position = len(self.current)
        self.current.append((unit, phase))
        if self.on_track and (position >= len(self.recorded) or self.recorded[position] != (unit, phase)):
            self.on_track = False

    def upcoming(self) -> list:
        """Units predicted after the last recorded request (empty when off track)."""
        if not self.on_track:
            return []
        return [unit for unit, _ in self.recorded[len(self.current):]]

    def reuse_distance(self, unit, phase: str) -> int | None:
        """Elements fetched before `unit` is requested again in the same phase (None: not again)."""
        if not self.on_track:
            return None
        distance = 0
        for other, other_phase in self.recorded[len(self.current):]:
            if other_phase != phase:
                return None
            if other is unit:
                return distance
            distance += other.numel
        return None
