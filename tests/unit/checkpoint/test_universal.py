"""Resharding arithmetic: overlaps of saved pieces with wanted ranges, on awkward sizes."""

import itertools

import pytest
import torch

from zerospeed.checkpoint.universal import Copy, SavedPiece, missing_ranges, plan_copies


def _pieces(bounds, rank=0):
    return [SavedPiece(s, e, rank, i) for i, (s, e) in enumerate(bounds)]


def _apply(saved_values: dict, copies, start, end):
    out = torch.full((end - start,), -1.0)
    for copy in copies:
        source = saved_values[(copy.source.rank, copy.source.index)]
        out[copy.target_offset : copy.target_offset + copy.length] = source[copy.source_offset : copy.source_offset + copy.length]
    return out


def test_one_piece_inside_another():
    copies = plan_copies(_pieces([(0, 10), (10, 25)]), 7, 12)
    assert copies == [Copy(SavedPiece(0, 10, 0, 0), 7, 0, 3), Copy(SavedPiece(10, 25, 0, 1), 0, 3, 2)]
    assert missing_ranges(copies, 7, 12) == []


def test_gaps_are_reported():
    copies = plan_copies(_pieces([(0, 4), (6, 8)]), 0, 10)
    assert missing_ranges(copies, 0, 10) == [(4, 6), (8, 10)]
    assert missing_ranges(plan_copies([], 3, 5), 3, 5) == [(3, 5)]


def test_duplicated_pieces_are_used_once():
    saved = [SavedPiece(0, 10, r, 0) for r in range(4)]  # stage 0: every rank saved everything
    copies = plan_copies(saved, 2, 9)
    assert len(copies) == 1 and copies[0].source.rank == 0 and copies[0].length == 7


@pytest.mark.parametrize("numel,saved_ranks,wanted_ranks", list(itertools.product([1, 31, 481], [1, 2, 3, 4], [1, 2, 4, 5])))
def test_any_split_to_any_split_is_exact(numel, saved_ranks, wanted_ranks):
    full = torch.arange(numel, dtype=torch.float32)

    def split(parts):
        base, extra = divmod(numel, parts)
        bounds, cursor = [], 0
        for part in range(parts):
            size = base + (part < extra)
            bounds.append((cursor, cursor + size))
            cursor += size
        return [b for b in bounds if b[0] < b[1]]

    saved = [SavedPiece(s, e, rank, 0) for rank, (s, e) in enumerate(split(saved_ranks))]
    values = {(p.rank, 0): full[p.start : p.end] for p in saved}
    for start, end in split(wanted_ranks):
        copies = plan_copies(saved, start, end)
        assert missing_ranges(copies, start, end) == []
        assert torch.equal(_apply(values, copies, start, end), full[start:end])
