"""Stage-3 partition math (per-parameter chunks, unit shards, rank-major copies) and the fetch schedule."""

import pytest
import torch

from zerospeed.zero.stage3.layout import UnitLayout, chunk_numel, copy_out, scatter_in, shard_of, valid_in_chunk
from zerospeed.zero.stage3.schedule import BACKWARD, FORWARD, FetchSchedule


@pytest.mark.parametrize("numel,world", [(1, 1), (7, 2), (5, 4), (12, 4), (481, 2), (1, 3), (0, 2)])
def test_chunks_cover_the_parameter_exactly_once(numel, world):
    chunk = chunk_numel(numel, world)
    assert chunk == -(-numel // world)
    assert sum(valid_in_chunk(numel, world, r) for r in range(world)) == numel
    assert all(0 <= valid_in_chunk(numel, world, r) <= chunk for r in range(world))


def test_exact_numbers_for_a_short_last_chunk():
    assert chunk_numel(5, 4) == 2
    assert [valid_in_chunk(5, 4, r) for r in range(4)] == [2, 2, 1, 0]
    layout = UnitLayout.of([5, 3], 4)
    assert (layout.chunks, layout.offsets, layout.shard_numel, layout.gathered_numel) == ((2, 1), (0, 2), 3, 12)
    assert layout.logical_range(0, 2) == (4, 5) and layout.logical_range(0, 3) == (6, 6)
    assert layout.logical_range(1, 3) == (3, 3)


@pytest.mark.parametrize("numels,world", [([5, 3], 4), ([7], 2), ([12, 1, 9], 3), ([4, 4], 1)])
def test_gather_copy_out_and_scatter_in_round_trip(numels, world):
    layout = UnitLayout.of(numels, world)
    values = [torch.arange(n, dtype=torch.float32) + 100 * i for i, n in enumerate(numels)]
    shards = []
    for rank in range(world):
        shards.append(torch.cat([shard_of(v, n, world, rank) for v, n in zip(values, numels)]))
        assert shards[-1].numel() == layout.shard_numel
    gathered = torch.cat(shards)  # what all_gather_into_tensor produces: rank-major
    for value, full in zip(values, copy_out(gathered, layout, torch.empty(layout.numel))):
        assert torch.equal(full, value)
    staging = torch.zeros(layout.gathered_numel)
    for index, value in enumerate(values):
        scatter_in(staging, layout, index, value)
    assert torch.equal(staging, gathered)  # reduce-scatter input puts each rank's chunks in its slice


class _Unit:
    def __init__(self, numel):
        self.numel = numel


def test_schedule_predicts_after_a_recorded_micro_step_and_falls_back_on_change():
    a, b, c = _Unit(10), _Unit(20), _Unit(30)
    schedule = FetchSchedule()
    schedule.begin()
    for unit, phase in ((a, FORWARD), (b, FORWARD), (c, FORWARD), (c, BACKWARD), (a, BACKWARD)):
        schedule.record(unit, phase)
        assert schedule.upcoming() == []  # nothing recorded yet: on demand only
    schedule.end()
    schedule.begin()
    schedule.record(a, FORWARD)
    assert schedule.upcoming() == [b, c, c, a]
    assert schedule.reuse_distance(a, FORWARD) is None  # next use of a is in backward
    schedule.record(b, FORWARD)
    schedule.record(a, FORWARD)  # not what was recorded: off track, no more predictions
    assert schedule.upcoming() == [] and not schedule.on_track
    schedule.end()
    assert [u for u, _ in schedule.recorded] == [a, b, a]


def test_reuse_distance_counts_elements_in_between():
    a, b = _Unit(10), _Unit(20)
    schedule = FetchSchedule()
    schedule.begin()
    for unit in (a, b, a):
        schedule.record(unit, FORWARD)
    schedule.end()
    schedule.begin()
    schedule.record(a, FORWARD)
    assert schedule.reuse_distance(a, FORWARD) == 20
