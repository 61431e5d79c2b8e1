"""Resharding arithmetic: which saved element ranges fill a wanted range (pure, no I/O).

A checkpoint stores each parameter as pieces `[start, end)` of its flattened elements,
wherever the saving ranks happened to own them. Loading into any world size or ZeRO
stage is a copy of overlaps: for each range this rank owns now, the saved pieces that
intersect it, and where each intersection sits on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class SavedPiece:
    """Elements [start, end) of one parameter, stored as entry `index` of rank `rank`'s shard."""

    start: int
    end: int
    rank: int
    index: int


@dataclass(frozen=True)
class Copy:
    """Copy `length` elements from saved piece `source` at `source_offset` to the wanted range at `target_offset`."""

    source: SavedPiece
    source_offset: int
    target_offset: int
    length: int


def saved_pieces(shards: dict) -> dict[str, list[SavedPiece]]:
    """Every saved piece by parameter name, from a manifest's `shards` field."""
    found: dict[str, list[SavedPiece]] = {}
    for rank, shard in shards.items():
        for index, piece in enumerate(shard["pieces"]):
            found.setdefault(piece["name"], []).append(SavedPiece(piece["start"], piece["end"], int(rank), index))
    return found


def plan_copies(saved: Sequence[SavedPiece], start: int, end: int) -> list[Copy]:
    """Copies that fill [start, end) from `saved`, one per overlapping piece, in element order.

    Pieces that repeat elements (stage 0 saves every element on every rank) are used once:
    an element is taken from the first piece, in start order, that covers it.
    """
    copies: list[Copy] = []
    cursor = start
    for piece in sorted(saved, key=lambda p: (p.start, p.rank, p.index)):
        lo, hi = max(cursor, piece.start), min(end, piece.end)
        if lo >= hi:
            continue
        copies.append(Copy(piece, lo - piece.start, lo - start, hi - lo))
        cursor = hi
        if cursor >= end:
            break
    return copies


def missing_ranges(copies: Sequence[Copy], start: int, end: int) -> list[tuple[int, int]]:
    """Sub-ranges of [start, end) that `copies` leave unfilled (empty when the checkpoint covers it)."""
    gaps, cursor = [], start
    for copy in sorted(copies, key=lambda c: c.target_offset):
        lo = start + copy.target_offset
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, lo + copy.length)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def pieces_by_rank(copies: Sequence[Copy]) -> dict[int, list[Copy]]:
    """Group copies by the saving rank, so each shard file is opened once."""
    grouped: dict[int, list[Copy]] = {}
    for copy in copies:
        grouped.setdefault(copy.source.rank, []).append(copy)
    return grouped


def split_evenly(numel: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal contiguous ranges covering `numel` (tests, tools)."""
    base, extra = divmod(numel, parts)
    ranges, cursor = [], 0
    for part in range(parts):
        size = base + (1 if part < extra else 0)
        ranges.append((cursor, cursor + size))
        cursor += size
    return ranges
