"""Stage-3 partition math: each parameter split into `world_size` equal chunks, a unit's shard.

DeepSpeed shards every parameter on its own: rank r holds elements
[r * chunk, (r + 1) * chunk) of the flattened parameter, chunk = ceil(numel / world_size),
zero-padded past the end. A *unit* (the parameters fetched together, usually one
module's) lays its members' chunks end to end in one shard buffer, so a single
all-gather fetches the whole unit. The gathered buffer is rank-major
([rank 0 shard | rank 1 shard | ...]); `copy_out` rebuilds each parameter from its
column of chunks and `scatter_in` does the reverse for gradients before a
reduce-scatter. A unit holding a single parameter needs neither copy: its rank-major
and parameter-major layouts coincide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def chunk_numel(numel: int, world_size: int) -> int:
    """Elements of one parameter each rank holds: ceil(numel / world_size) (DeepSpeed's ds_tensor)."""
    return -(-numel // world_size) if numel else 0


def valid_in_chunk(numel: int, world_size: int, rank: int) -> int:
    """How many of rank `rank`'s chunk elements are real (the rest is padding)."""
    chunk = chunk_numel(numel, world_size)
    return max(0, min(chunk, numel - rank * chunk))


@dataclass(frozen=True)
class UnitLayout:
    """Where each parameter's chunk sits in a unit's shard, for `world_size` ranks."""

    numels: tuple[int, ...]
    chunks: tuple[int, ...]  # chunk_numel of each parameter
    offsets: tuple[int, ...]  # start of each parameter's chunk in the shard
    shard_numel: int  # sum of chunks
    world_size: int

    @classmethod
    def of(cls, numels: list[int], world_size: int) -> "UnitLayout":
        chunks = [chunk_numel(n, world_size) for n in numels]
        offsets, cursor = [], 0
        for chunk in chunks:
            offsets.append(cursor)
            cursor += chunk
        return cls(tuple(numels), tuple(chunks), tuple(offsets), cursor, world_size)

    @property
    def gathered_numel(self) -> int:
        return self.shard_numel * self.world_size

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @property
    def single(self) -> bool:
        """One parameter: the gathered buffer already is that parameter, padded."""
        return len(self.numels) == 1

    def logical_range(self, index: int, rank: int) -> tuple[int, int]:
        """Elements [start, end) of flattened parameter `index` that rank `rank` really holds."""
        start = rank * self.chunks[index]
        return start, start + valid_in_chunk(self.numels[index], self.world_size, rank)


def copy_out(gathered: torch.Tensor, layout: UnitLayout, out: torch.Tensor) -> list[torch.Tensor]:
    """Write each parameter's full values from a rank-major gathered buffer into `out`
    (parameters end to end, `layout.numel` long); returns each parameter's flat view of `out`."""
    flats, cursor = [], 0
    rows = gathered.view(layout.world_size, layout.shard_numel)
    for numel, chunk, offset in zip(layout.numels, layout.chunks, layout.offsets):
        flat = out[cursor : cursor + numel]
        full_rows = numel // chunk if chunk else 0
        if full_rows:
            flat[: full_rows * chunk].view(full_rows, chunk).copy_(rows[:full_rows, offset : offset + chunk])
        rest = numel - full_rows * chunk
        if rest:
            flat[full_rows * chunk :].copy_(rows[full_rows, offset : offset + rest])
        flats.append(flat)
        cursor += numel
    return flats


def scatter_in(staging: torch.Tensor, layout: UnitLayout, index: int, values: torch.Tensor) -> None:
    """Add parameter `index`'s flat `values` into its chunks of a rank-major buffer."""
    numel, chunk, offset = layout.numels[index], layout.chunks[index], layout.offsets[index]
    if layout.single:
        staging[:numel].add_(values)
        return
    rows = staging.view(layout.world_size, layout.shard_numel)[:, offset : offset + chunk]
    full_rows = numel // chunk
    if full_rows:
        rows[:full_rows].add_(values[: full_rows * chunk].view(full_rows, chunk))
    rest = numel - full_rows * chunk
    if rest:
        rows[full_rows, :rest].add_(values[full_rows * chunk :])


def shard_of(flat: torch.Tensor, numel: int, world_size: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s chunk of a full flat parameter, zero-padded to chunk_numel (a new tensor)."""
    chunk = chunk_numel(numel, world_size)
    out = torch.zeros(chunk, dtype=flat.dtype, device=flat.device)
    valid = valid_in_chunk(numel, world_size, rank)
    if valid:
        out[:valid].copy_(flat[rank * chunk : rank * chunk + valid])
    return out
