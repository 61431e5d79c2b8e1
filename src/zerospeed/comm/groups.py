"""The pipe × data × tensor process grid: which ranks share each group, and the groups.

Ranks are laid out as `torch.arange(world).view(pp, dp, tp)` (tensor-parallel ranks are
neighbours, then data-parallel, then pipeline stages), as in picotron's
process_group_manager. `grid_rank_lists` is the pure arithmetic; `build_grid` creates the
torch process groups, which every rank must do in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from zerospeed.errors import ConfigError


def grid_rank_lists(world_size: int, pp: int = 1, tp: int = 1) -> dict[str, list[list[int]]]:
    """Rank lists of every data, pipe and tensor group for a (pp, dp, tp) grid.

    `dp` is `world_size // (pp * tp)`. Example, world 8, pp 2, tp 2 (so dp 2):
    tensor [[0,1],[2,3],[4,5],[6,7]], data [[0,2],[1,3],[4,6],[5,7]],
    pipe [[0,4],[1,5],[2,6],[3,7]].
    """
    for key, value in (("world_size", world_size), ("pp", pp), ("tp", tp)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")
    if world_size % (pp * tp):
        raise ConfigError(
            f"world_size={world_size} is not divisible by pp*tp={pp}*{tp}={pp * tp}; "
            f"allowed: pp*tp dividing the number of ranks"
        )
    dp = world_size // (pp * tp)
    grid = torch.arange(world_size).view(pp, dp, tp)
    return {
        "tensor": grid.reshape(pp * dp, tp).tolist(),
        "data": grid.permute(0, 2, 1).reshape(pp * tp, dp).tolist(),
        "pipe": grid.permute(1, 2, 0).reshape(dp * tp, pp).tolist(),
    }


def grid_coordinates(rank: int, world_size: int, pp: int = 1, tp: int = 1) -> tuple[int, int, int]:
    """(pipe stage, data-parallel rank, tensor-parallel rank) of `rank` in the grid."""
    dp = world_size // (pp * tp)
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} outside world_size={world_size}")
    return rank // (dp * tp), (rank // tp) % dp, rank % tp


@dataclass(frozen=True)
class ProcessGroupGrid:
    """This rank's place in the grid and the groups it belongs to."""

    world_size: int
    pp: int
    dp: int
    tp: int
    pp_rank: int
    dp_rank: int
    tp_rank: int
    pipe_group: Any
    data_group: Any
    tensor_group: Any
    pipe_ranks: tuple[int, ...]
    data_ranks: tuple[int, ...]
    tensor_ranks: tuple[int, ...]

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


_GRID: ProcessGroupGrid | None = None


def build_grid(pp: int = 1, tp: int = 1) -> ProcessGroupGrid:
    """Create every group of the grid (a collective call: all ranks, same arguments)."""
    import zerospeed.comm as comm

    global _GRID
    world, rank = comm.get_world_size(), comm.get_rank()
    lists = grid_rank_lists(world, pp, tp)
    mine: dict[str, tuple[Any, tuple[int, ...]]] = {}
    for kind in ("pipe", "data", "tensor"):
        for ranks in lists[kind]:
            group = comm.new_group(ranks)  # every rank creates every group, in one order
            if rank in ranks:
                mine[kind] = (group, tuple(ranks))
    pp_rank, dp_rank, tp_rank = grid_coordinates(rank, world, pp, tp)
    _GRID = ProcessGroupGrid(
        world_size=world, pp=pp, dp=world // (pp * tp), tp=tp,
        pp_rank=pp_rank, dp_rank=dp_rank, tp_rank=tp_rank,
        pipe_group=mine["pipe"][0], data_group=mine["data"][0], tensor_group=mine["tensor"][0],
        pipe_ranks=mine["pipe"][1], data_ranks=mine["data"][1], tensor_ranks=mine["tensor"][1],
    )
    return _GRID


def get_grid() -> ProcessGroupGrid | None:
    """The grid `build_grid` made last, or None."""
    return _GRID


def reset_grid() -> None:
    global _GRID
    _GRID = None
