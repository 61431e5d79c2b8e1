"""Partition arithmetic on awkward sizes, and parameters as views into a bucket."""

import pytest
import torch

from zerospeed.zero.flat import ALIGNMENT, FlatBucket, bucket_layout, param_partition_overlap, plan_buckets


@pytest.mark.parametrize("numels,world", [([7], 2), ([1, 1, 1], 4), ([100, 3, 999], 3), ([ALIGNMENT * 4], 4), ([5], 1)])
def test_layout_pads_to_equal_aligned_partitions(numels, world):
    layout = bucket_layout(numels, world)
    assert layout.numel == sum(numels)
    assert layout.padded_numel >= layout.numel
    assert layout.padded_numel % (world * ALIGNMENT) == 0
    assert layout.padded_numel - layout.numel < world * ALIGNMENT
    assert layout.partition_numel * world == layout.padded_numel
    assert list(layout.offsets) == [sum(numels[:i]) for i in range(len(numels))]


def test_layout_exact_numbers_for_a_straddling_param():
    layout = bucket_layout([10, 100, 3], 2)  # 113 elements -> 128 padded, 64 per rank
    assert (layout.padded_numel, layout.partition_numel) == (128, 64)
    assert layout.partition_range(1) == (64, 128)
    # the 100-element param [10, 110) straddles both partitions
    assert param_partition_overlap(10, 100, 0, 64) == (10, 64)
    assert param_partition_overlap(10, 100, 64, 128) == (64, 110)
    # the 3-element param [110, 113) is wholly in rank 1's partition
    assert param_partition_overlap(110, 3, 0, 64) is None
    assert param_partition_overlap(110, 3, 64, 128) == (110, 113)


def test_plan_buckets_never_splits_a_param():
    assert plan_buckets([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]
    assert plan_buckets([3, 20, 3], 8) == [[0], [1], [2]]
    assert plan_buckets([3, 3, 3], 100) == [[0, 1, 2]]
    assert plan_buckets([], 8) == []


def test_params_become_views_of_the_bucket_and_pieces_cover_each_rank():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 5)), torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(2, 2))]
    originals = [p.detach().clone() for p in params]
    bucket = FlatBucket(params, ["a", "b", "c"], world_size=4, rank=2)
    for param, original in zip(params, originals):
        assert torch.equal(param, original)
    bucket.data.zero_()
    assert all(float(p.detach().abs().sum()) == 0.0 for p in params)  # views: storage is shared
    covered = []
    for rank in range(4):
        start, end = bucket.layout.partition_range(rank)
        covered += [(i, s, e) for i, s, e in bucket.pieces(start, end)]
    total = sum(e - s for _, s, e in covered)
    assert total == 15 + 7 + 4
