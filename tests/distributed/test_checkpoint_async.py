"""Async saves reuse their CPU staging buffers and still write each save's own values.

Two async saves with training in between (the second refills the first's buffers, so a
writer reading live buffers or a refill before the first write finished would show up as
the first checkpoint holding the second's values). Fresh engines load each tag and must
hold exactly the parameters and optimizer states of the moment it was saved.
"""

import os

import pytest
import torch

from tests.distributed import test_checkpoint_common as common
from tests.distributed.launcher import run_distributed

STAGES = (0, 2, 3)


def _save_twice(root: str) -> dict:
    out = {}
    for stage in STAGES:
        engine = common.build(stage)
        common.train(engine, 0, 2)
        at_first = common.state_of(engine)
        engine.save_checkpoint(os.path.join(root, f"z{stage}"), tag="first", async_save=True)
        common.train(engine, 2, 1)  # runs while the first save is written
        pool = engine.__dict__["_snapshot_buffers"]
        first_allocated = pool.allocated_bytes
        at_second = common.state_of(engine)
        engine.save_checkpoint(os.path.join(root, f"z{stage}"), tag="second", async_save=True)
        common.train(engine, 3, 1)
        engine.wait_for_checkpoint()
        out[stage] = {"first": at_first, "second": at_second, "first_allocated": first_allocated,
                      "second_allocated": pool.allocated_bytes, "second_reused": pool.reused_bytes,
                      "held": pool.held_bytes}
    return out


def _load_each(root: str) -> dict:
    out = {}
    for stage in STAGES:
        for tag in ("first", "second"):
            engine = common.build(stage, seed=5)
            engine.load_checkpoint(os.path.join(root, f"z{stage}"), tag=tag)
            out[(stage, tag)] = common.state_of(engine)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("async"))
    saved = run_distributed(_save_twice, 2, root, timeout=240)
    loaded = run_distributed(_load_each, 2, root, timeout=240)
    return saved, loaded


@pytest.mark.parametrize("stage", STAGES)
def test_second_async_save_only_copies_into_the_first_saves_buffers(runs, stage):
    saved, _ = runs
    for rank in range(2):
        facts = saved[rank][stage]
        assert facts["first_allocated"] > 0
        assert facts["second_allocated"] == 0
        assert facts["second_reused"] == facts["first_allocated"] == facts["held"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tag", ["first", "second"])
def test_each_async_checkpoint_holds_the_values_of_its_own_step(runs, stage, tag):
    saved, loaded = runs
    for rank in range(2):
        expected, got = saved[rank][stage][tag], loaded[rank][(stage, tag)]
        assert got["counters"] == expected["counters"]
        for name in expected["params"]:
            assert torch.equal(got["params"][name], expected["params"][name]), (rank, name)
        for mine, theirs in zip(got["pieces"], expected["pieces"], strict=True):
            assert mine[:4] == theirs[:4]
            assert torch.equal(mine[4], theirs[4])
            for key, value in theirs[5].items():
                assert torch.equal(mine[5][key], value) if isinstance(value, torch.Tensor) else mine[5][key] == value
    other = "second" if tag == "first" else "first"
    assert not all(torch.equal(saved[0][stage][tag]["params"][n], saved[0][stage][other]["params"][n])
                   for n in saved[0][stage][tag]["params"])  # the two saves differ, so the test can tell them apart


def _slow_background_copies(root: str) -> dict:
    """The writer thread's copies are slowed down, the optimizer step comes at once: it must wait
    for them, so the checkpoint still holds the values of the save, not of the step after it."""
    import time

    from zerospeed.checkpoint import snapshot_buffers

    original = snapshot_buffers.SnapshotBuffers.run_deferred
    seen = {}

    def slow(self):
        seen["deferred_bytes"] = self.deferred_bytes
        time.sleep(0.3)
        original(self)

    snapshot_buffers.SnapshotBuffers.run_deferred = slow
    try:
        engine = common.build(2)
        common.train(engine, 0, 2)
        at_save = common.state_of(engine)
        engine.save_checkpoint(os.path.join(root, "slow"), tag="t", async_save=True)
        snap = engine.__dict__["_checkpoint_pending"].snap
        common.train(engine, 2, 1)  # its step waits for the copies
        engine.wait_for_checkpoint()
    finally:
        snapshot_buffers.SnapshotBuffers.run_deferred = original
    fresh = common.build(2, seed=5)
    fresh.load_checkpoint(os.path.join(root, "slow"), tag="t")
    return {"at_save": at_save, "loaded": common.state_of(fresh), "step_wait_s": snap.step_wait_s, **seen}


def test_the_step_after_an_async_save_waits_for_its_background_copies(tmp_path):
    for facts in run_distributed(_slow_background_copies, 2, str(tmp_path), timeout=240):
        assert facts["deferred_bytes"] > 0  # masters, states (and rank 0's parameters) copied in the thread
        assert facts["step_wait_s"] > 0
        for name, value in facts["at_save"]["params"].items():
            assert torch.equal(facts["loaded"]["params"][name], value), name
        for mine, theirs in zip(facts["loaded"]["pieces"], facts["at_save"]["pieces"], strict=True):
            assert torch.equal(mine[4], theirs[4])
            for key, value in theirs[5].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(mine[5][key], value), (mine[0], key)
