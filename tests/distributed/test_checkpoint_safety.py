"""Checkpoint safety: kill -9 at every save phase, corrupted files, bad tags, mismatched models.

The crash test forks one child per phase from a 1-rank engine; the child saves with the
test hook ZEROSPEED_CKPT_CRASH_AT=<phase> and is SIGKILLed there. Every failure case must
raise CheckpointError naming the cause, on every rank, before any rank changes state.
"""

import os
import shutil
import signal

import pytest
import torch

from tests.distributed import test_checkpoint_common as common
from tests.distributed.launcher import run_distributed

PHASES = ["after_shard", "before_manifest", "after_manifest", "after_old_aside", "after_rename", "after_latest"]


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b["params"][n]) for n, v in a["params"].items()) and all(
        torch.equal(p[4], q[4]) for p, q in zip(a["pieces"], b["pieces"]))


def _crash_every_phase(root: str) -> dict:
    from zerospeed.checkpoint import layout

    engine = common.build(2)
    common.train(engine, 0, 2)
    for phase in PHASES:
        engine.save_checkpoint(os.path.join(root, phase), tag="good")
    good = common.state_of(engine)
    common.train(engine, 2, 1)
    newer = common.state_of(engine)
    signals = {}
    for phase in PHASES:
        pid = os.fork()
        if pid == 0:
            os.environ[layout.CRASH_ENV] = phase
            engine.save_checkpoint(os.path.join(root, phase), tag="good" if phase == "after_old_aside" else None)
            os._exit(0)  # not reached: the hook kills the child
        _, status = os.waitpid(pid, 0)
        signals[phase] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    out = {"signals": signals}
    for phase in PHASES:
        directory = os.path.join(root, phase)
        engine = common.build(2, seed=3)
        path, _ = engine.load_checkpoint(directory)
        with open(os.path.join(directory, "latest")) as f:
            latest = f.read()
        loaded = common.state_of(engine)
        out[phase] = {"path": os.path.basename(path), "latest": latest, "equals_good": _same(good, loaded),
                      "equals_newer": _same(newer, loaded), "listing": sorted(os.listdir(directory))}
    # A later successful save cleans up what the dead save left behind.
    engine.save_checkpoint(os.path.join(root, "after_old_aside"), tag="good")
    out["after_cleanup"] = sorted(os.listdir(os.path.join(root, "after_old_aside")))
    # Without `latest`, the newest complete tag wins; an incomplete directory is skipped.
    directory = os.path.join(root, "after_rename")
    os.remove(os.path.join(directory, "latest"))
    os.makedirs(os.path.join(directory, "global_step99"))
    engine = common.build(2, seed=3)
    path, _ = engine.load_checkpoint(directory)
    out["no_latest"] = (os.path.basename(path), _same(newer, common.state_of(engine)))
    return out


@pytest.fixture(scope="module")
def crashes(tmp_path_factory):
    return run_distributed(_crash_every_phase, 1, str(tmp_path_factory.mktemp("crash")), timeout=180)[0]


def test_every_phase_was_killed(crashes):
    assert crashes["signals"] == {phase: signal.SIGKILL for phase in PHASES}


@pytest.mark.parametrize("phase", PHASES[:-1])
def test_kill_before_commit_keeps_previous_checkpoint(crashes, phase):
    result = crashes[phase]
    # Killed while overwriting 'good': the loader finds the complete copy that was set aside.
    expected_path = ".old-good-" if phase == "after_old_aside" else "good"
    assert result["path"].startswith(expected_path) and result["latest"] == "good"
    assert result["equals_good"] and not result["equals_newer"]


def test_kill_after_latest_has_the_new_checkpoint(crashes):
    result = crashes["after_latest"]
    assert result["path"] == "global_step3" and result["latest"] == "global_step3" and result["equals_newer"]


def test_leftovers_are_ignored_then_cleaned(crashes):
    assert any(n.startswith(".tmp-") for n in crashes["after_manifest"]["listing"])
    assert any(n.startswith(".old-good-") for n in crashes["after_old_aside"]["listing"])
    assert "good" not in crashes["after_old_aside"]["listing"]
    assert crashes["after_cleanup"] == ["good", "latest"]


def test_without_latest_the_newest_complete_tag_loads(crashes):
    assert crashes["no_latest"] == ("global_step3", True)


# -- corruption and mismatches, 2 ranks ------------------------------------------------------------
def _attempt(results: dict, label: str, engine, before: dict, fn) -> None:
    from zerospeed.errors import CheckpointError

    try:
        fn()
        results[label] = None
    except CheckpointError as error:
        results[label] = str(error)
    results[label + ":unchanged"] = _same(before, common.state_of(engine)) and engine.global_steps == before["counters"]["global_steps"]


def _corrupt(root: str) -> None:
    base = os.path.join(root, "base")
    for name in ("flip", "truncate", "garbled_manifest"):
        shutil.copytree(base, os.path.join(root, name))
    path = os.path.join(root, "flip", "global_step2", "rank00001.safetensors")
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    path = os.path.join(root, "truncate", "global_step2", "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    with open(os.path.join(root, "garbled_manifest", "global_step2", "manifest.json"), "w") as f:
        f.write('{"format": "zerospeed.checkpoint", "files": ')
    os.makedirs(os.path.join(root, "empty"))


def _failures(root: str) -> dict:
    from zerospeed import comm
    from zerospeed.errors import CheckpointError
    from tests.distributed.parity import DIM, HIDDEN, make_model

    engine = common.build(2)
    common.train(engine, 0, 2)
    engine.save_checkpoint(os.path.join(root, "base"), client_state={"epoch": 1})
    if comm.get_rank() == 0:
        _corrupt(root)
    comm.barrier()
    fresh = common.build(2, seed=5)
    before = common.state_of(fresh)
    out = {}
    for label in ("flip", "truncate", "garbled_manifest"):
        _attempt(out, label, fresh, before, lambda label=label: fresh.load_checkpoint(os.path.join(root, label)))
    _attempt(out, "missing_dir", fresh, before, lambda: fresh.load_checkpoint(os.path.join(root, "nope")))
    _attempt(out, "unknown_tag", fresh, before, lambda: fresh.load_checkpoint(os.path.join(root, "base"), tag="step7"))
    out["empty"] = fresh.load_checkpoint(os.path.join(root, "empty"))

    wider = make_model(5)
    wider.up, wider.down = torch.nn.Linear(DIM, HIDDEN + 1), torch.nn.Linear(HIDDEN + 1, DIM)
    wider_engine = common.build(2, model=wider)
    _attempt(out, "shapes", wider_engine, common.state_of(wider_engine),
             lambda: wider_engine.load_checkpoint(os.path.join(root, "base")))

    extra = make_model(5)
    extra.extra = torch.nn.Linear(DIM, 3)
    extra_engine = common.build(2, model=extra)
    _attempt(out, "strict", extra_engine, common.state_of(extra_engine),
             lambda: extra_engine.load_checkpoint(os.path.join(root, "base")))
    extra_before = extra_engine.module.extra.weight.detach().clone()
    extra_engine.load_checkpoint(os.path.join(root, "base"), load_module_strict=False)
    saved = common.state_of(engine)
    out["non_strict_loaded"] = all(torch.equal(v, extra_engine.module.get_parameter(n)) for n, v in saved["params"].items())
    out["non_strict_kept_extra"] = torch.equal(extra_before, extra_engine.module.extra.weight)

    module_only = common.build(2, seed=6)
    path, client_state = module_only.load_checkpoint(os.path.join(root, "base"), load_module_only=True)
    out["module_only"] = {
        "client_state": client_state,
        "params": all(torch.equal(v, module_only.module.get_parameter(n)) for n, v in saved["params"].items()),
        "masters": all(torch.equal(p[4], q[4]) for p, q in zip(saved["pieces"], common.state_of(module_only)["pieces"])),
        "optimizer_state": len(module_only.optimizer.state), "global_steps": module_only.global_steps,
    }

    failing = common.build(2, {"checkpoint": {"tag_validation": "Fail"}})
    try:
        failing.save_checkpoint(os.path.join(root, "tags"), tag=f"tag-of-rank-{comm.get_rank()}")
        out["tag_validation"] = None
    except CheckpointError as error:
        out["tag_validation"] = str(error)
    out["tags_dir"] = sorted(os.listdir(os.path.join(root, "tags"))) if os.path.isdir(os.path.join(root, "tags")) else None
    return out


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    return run_distributed(_failures, 2, str(tmp_path_factory.mktemp("failures")), timeout=180)


@pytest.mark.parametrize("label,needle", [
    ("flip", r"rank00001.safetensors is corrupted: CRC32"),
    ("truncate", r"model.safetensors is \d+ bytes, the manifest says \d+: the file is truncated"),
    ("garbled_manifest", r"manifest.json is unreadable or corrupted"),
    ("missing_dir", r"checkpoint directory .*nope does not exist"),
    ("unknown_tag", r"checkpoint tag 'step7' not found in .*base; available tags: global_step2"),
    ("shapes", r"shapes differ for 4 tensors: down.bias|shapes differ for \d+ tensors: .*up.weight: checkpoint \(37, 12\) vs model \(38, 12\)"),
    ("strict", r"not in the model|missing from the checkpoint \(2\): extra.bias, extra.weight"),
])
def test_failure_raises_on_every_rank_and_changes_nothing(failures, label, needle):
    import re

    for rank, result in enumerate(failures):
        assert result[label] is not None, f"rank {rank}: {label} loaded without error"
        assert re.search(needle, result[label]), f"rank {rank}: {result[label]}"
        assert result[label + ":unchanged"], f"rank {rank}: state changed by failed load '{label}'"


def test_empty_directory_loads_nothing_like_deepspeed(failures):
    assert all(result["empty"] == (None, None) for result in failures)


def test_non_strict_load_and_module_only(failures):
    for result in failures:
        assert result["non_strict_loaded"] and result["non_strict_kept_extra"]
        module_only = result["module_only"]
        assert module_only["client_state"] == {"epoch": 1}
        assert module_only["params"] and module_only["masters"]
        assert module_only["optimizer_state"] == 0 and module_only["global_steps"] == 0


def test_tag_validation_fail_raises_on_every_rank(failures):
    for result in failures:
        assert "ranks passed different tags (rank 0: 'tag-of-rank-0', rank 1: 'tag-of-rank-1')" in result["tag_validation"]
        assert "tag_validation = Fail" in result["tag_validation"]
        assert result["tags_dir"] is None
