"""Rank lists of the pipe x data x tensor grid: pure arithmetic, no processes."""

import pytest

from zerospeed.comm.groups import grid_coordinates, grid_rank_lists
from zerospeed.errors import ConfigError


def test_world_8_pp_2_tp_2():
    lists = grid_rank_lists(8, pp=2, tp=2)
    assert lists["tensor"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lists["data"] == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lists["pipe"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_pure_data_parallel():
    lists = grid_rank_lists(4)
    assert lists["data"] == [[0, 1, 2, 3]]
    assert lists["tensor"] == [[0], [1], [2], [3]]
    assert lists["pipe"] == [[0], [1], [2], [3]]


def test_world_8_pp_4_and_world_8_tp_4():
    assert grid_rank_lists(8, pp=4)["pipe"] == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert grid_rank_lists(8, pp=4)["data"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert grid_rank_lists(8, tp=4)["tensor"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert grid_rank_lists(8, tp=4)["data"] == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize("world, pp, tp", [(8, 2, 2), (12, 3, 2), (16, 2, 4), (6, 1, 3), (1, 1, 1)])
def test_every_rank_in_exactly_one_group_of_each_kind_and_coordinates_agree(world, pp, tp):
    lists = grid_rank_lists(world, pp, tp)
    dp = world // (pp * tp)
    for kind, size in (("pipe", pp), ("data", dp), ("tensor", tp)):
        flat = sorted(rank for ranks in lists[kind] for rank in ranks)
        assert flat == list(range(world)), kind
        assert all(len(ranks) == size for ranks in lists[kind]), kind
    for rank in range(world):
        pp_rank, dp_rank, tp_rank = grid_coordinates(rank, world, pp, tp)
        assert next(g for g in lists["pipe"] if rank in g).index(rank) == pp_rank
        assert next(g for g in lists["data"] if rank in g).index(rank) == dp_rank
        assert next(g for g in lists["tensor"] if rank in g).index(rank) == tp_rank


def test_indivisible_world_is_a_config_error():
    with pytest.raises(ConfigError, match=r"world_size=6 is not divisible by pp\*tp=2\*2=4"):
        grid_rank_lists(6, pp=2, tp=2)
    with pytest.raises(ConfigError, match="tp=0"):
        grid_rank_lists(4, tp=0)
