"""Async-save staging buffers: reused by shape and dtype across snapshots, values copied, unused ones dropped."""

import torch

from zerospeed.checkpoint import snapshot_buffers
from zerospeed.checkpoint.snapshot_buffers import SnapshotBuffers, stage, staging


def test_second_snapshot_reuses_every_buffer_and_copies_current_values():
    pool = SnapshotBuffers()
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.bfloat16)
    with staging(pool):
        first_a, first_b = stage(a), stage(b)
    assert pool.allocated_bytes == 6 * 4 + 4 * 2 and pool.reused_bytes == 0
    assert pool.held_bytes == 6 * 4 + 4 * 2
    a.add_(10)
    b.mul_(3)
    with staging(pool):
        second_b, second_a = stage(b), stage(a)  # another order: matched by shape and dtype
    assert pool.allocated_bytes == 0 and pool.reused_bytes == 6 * 4 + 4 * 2
    assert second_a.data_ptr() == first_a.data_ptr() and second_b.data_ptr() == first_b.data_ptr()
    assert torch.equal(second_a, torch.arange(6.0).reshape(2, 3) + 10)
    assert torch.equal(second_b, torch.full((4,), 3.0, dtype=torch.bfloat16))
    assert second_a.data_ptr() != a.data_ptr()  # a copy, not the live tensor


def test_unused_buffers_are_dropped_and_new_shapes_allocated():
    pool = SnapshotBuffers()
    with staging(pool):
        stage(torch.zeros(8))
        stage(torch.zeros(3))
    with staging(pool):
        stage(torch.zeros(8))
        stage(torch.zeros(5))  # new shape
    assert pool.reused_bytes == 8 * 4 and pool.allocated_bytes == 5 * 4
    assert pool.held_bytes == (8 + 5) * 4  # the 3-element buffer is gone
    pool.release()
    assert pool.held_bytes == 0


def test_two_equal_shapes_get_two_buffers():
    pool = SnapshotBuffers()
    with staging(pool):
        x, y = stage(torch.ones(4)), stage(torch.full((4,), 2.0))
    assert x.data_ptr() != y.data_ptr()
    assert torch.equal(x, torch.ones(4)) and torch.equal(y, torch.full((4,), 2.0))


def test_outside_staging_stage_is_a_plain_contiguous_clone():
    source = torch.arange(12.0).reshape(3, 4).t()
    copy = stage(source)
    assert copy.is_contiguous() and torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    assert snapshot_buffers._active is None


def test_staging_restores_the_previous_pool_after_an_error():
    pool = SnapshotBuffers()
    try:
        with staging(pool):
            stage(torch.ones(2))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert snapshot_buffers._active is None
    assert pool.held_bytes == 2 * 4


def test_a_deferred_snapshot_copies_only_now_tensors_until_run_deferred():
    pool = SnapshotBuffers()
    weights, running_mean = torch.ones(4), torch.zeros(3)
    with staging(pool, defer=True):
        staged_weights = stage(weights)
        staged_mean = stage(running_mean, now=True)  # a buffer a forward may change: copied at once
    running_mean.add_(5)
    assert torch.equal(staged_mean, torch.zeros(3))
    assert pool.deferred_bytes == 4 * 4
    pool.run_deferred()
    assert torch.equal(staged_weights, torch.ones(4)) and pool.deferred_bytes == 0
    with staging(pool):  # not deferred: copied inside the block, into the same buffers
        again = stage(weights)
    assert again.data_ptr() == staged_weights.data_ptr() and pool.deferred_bytes == 0
