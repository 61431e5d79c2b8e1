"""Flat, padded, rank-partitioned buffers: the one memory layout every ZeRO stage uses.

Trainable parameters are grouped into buckets (in reverse registration order, which is
roughly the order backward produces their gradients). Each bucket is one contiguous
buffer padded so it splits into `world_size` equal partitions whose length is a multiple
of `ALIGNMENT` elements; rank r owns partition r of every bucket. The model's parameters
become views into their bucket, so gathering a bucket's partitions (stage 1/2) updates
the model in place, and a bucket's gradient buffer reduce-scatters straight into each
rank's partition.

The partition arithmetic is pure (`bucket_layout`, `partition_range`,
`param_partition_overlap`) and unit-tested on awkward sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALIGNMENT = 32  # elements per partition boundary: 128 B in fp32, keeps vector ops aligned


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class BucketLayout:
    """Where each parameter sits in a bucket, and how the bucket splits over ranks."""

    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    numel: int  # sum of parameter numels
    padded_numel: int  # multiple of world_size * ALIGNMENT
    partition_numel: int  # padded_numel // world_size
    world_size: int

    def partition_range(self, rank: int) -> tuple[int, int]:
        start = rank * self.partition_numel
        return start, start + self.partition_numel


def bucket_layout(numels: list[int], world_size: int, alignment: int = ALIGNMENT) -> BucketLayout:
    """Lay parameters of `numels` end to end and pad to equal aligned partitions."""
    offsets, cursor = [], 0
    for n in numels:
        offsets.append(cursor)
        cursor += n
    padded = round_up(max(cursor, 1), world_size * alignment)
    return BucketLayout(tuple(offsets), tuple(numels), cursor, padded, padded // world_size, world_size)


def plan_buckets(numels: list[int], bucket_numel: int) -> list[list[int]]:
    """Split parameter indices (already in bucket order) into runs of <= bucket_numel.

    A parameter is never split; one larger than the limit gets a bucket of its own.
    """
    buckets: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, n in enumerate(numels):
        if current and size + n > bucket_numel:
            buckets.append(current)
            current, size = [], 0
        current.append(index)
        size += n
    if current:
        buckets.append(current)
    return buckets


def param_partition_overlap(offset: int, numel: int, part_start: int, part_end: int) -> tuple[int, int] | None:
    """The part of [offset, offset+numel) inside [part_start, part_end), or None."""
    start, end = max(offset, part_start), min(offset + numel, part_end)
    return (start, end) if start < end else None


class FlatBucket:
    """One bucket's buffers: working params (the model's storage) and the layout."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        names: list[str],
        world_size: int,
        rank: int,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.params = params
        self.names = names
        self.rank = rank
        self.layout = bucket_layout([p.numel() for p in params], world_size)
        first = params[0]
        self.dtype, self.device = dtype or first.dtype, first.device
        self.data = torch.zeros(self.layout.padded_numel, dtype=self.dtype, device=self.device)
        for param, offset, numel in zip(params, self.layout.offsets, self.layout.numels):
            self.data[offset : offset + numel].copy_(param.data.reshape(-1))
            param.data = self.data[offset : offset + numel].view_as(param)

    @property
    def partition_slice(self) -> slice:
        start, end = self.layout.partition_range(self.rank)
        return slice(start, end)

    def local_partition(self, flat: torch.Tensor) -> torch.Tensor:
        """This rank's partition of a full-bucket-sized tensor (a view)."""
        return flat[self.partition_slice]

    def pieces(self, start: int, end: int) -> list[tuple[int, int, int]]:
        """(param index, bucket start, bucket end) for each param overlapping [start, end)."""
        found = []
        for index, (offset, numel) in enumerate(zip(self.layout.offsets, self.layout.numels)):
            overlap = param_partition_overlap(offset, numel, start, end)
            if overlap is not None:
                found.append((index, *overlap))
        return found


def flatten_copy(params: list[torch.Tensor], layout: BucketLayout, dtype: torch.dtype) -> torch.Tensor:
    """A padded flat copy of `params` in `dtype` (fp32 originals for master weights)."""
    flat = torch.zeros(layout.padded_numel, dtype=dtype, device=params[0].device)
    for param, offset, numel in zip(params, layout.offsets, layout.numels):
        flat[offset : offset + numel].copy_(param.data.reshape(-1))
    return flat
