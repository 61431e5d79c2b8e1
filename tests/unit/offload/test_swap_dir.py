"""Swap directory hygiene: per-job naming, removal on close, stale directories of dead jobs,
and the nvme_path checks (missing, not writable, too small) that fail before training starts.

"Too small" uses a 1 MiB tmpfs mount where root may mount, else a patched disk_usage;
"not writable" uses a read-only tmpfs mount (root bypasses chmod), else a patched os.access.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import namedtuple

import pytest

from zerospeed.errors import ConfigError
from zerospeed.zero.offload import swap_dir
from zerospeed.zero.offload.swap_dir import SwapDirectory, check_path, open_swap_directory, remove_stale


@pytest.fixture
def root():
    path = tempfile.mkdtemp(prefix="zs-swapdir-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _try_mount(path, options) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True).returncode == 0


def test_directory_is_named_per_job_and_rank_and_removed_on_close(root, monkeypatch):
    monkeypatch.setenv("ZEROSPEED_JOB_ID", "job42")
    directory = SwapDirectory(root, rank=3)
    assert os.path.basename(directory.path) == "zerospeed-swap-job42-rank3"
    assert os.path.isdir(directory.path)
    open(directory.file("a.swp"), "w").close()
    directory.close()
    assert not os.path.exists(directory.path)


def test_directory_is_removed_when_its_owner_is_collected(root):
    import gc

    directory = SwapDirectory(root, rank=0)
    path = directory.path
    del directory
    gc.collect()
    assert not os.path.exists(path)


def test_live_directories_are_kept_and_dead_ones_removed(root):
    alive = SwapDirectory(root, rank=0)
    dead = os.path.join(root, "zerospeed-swap-old-rank0")
    os.makedirs(dead)
    open(os.path.join(dead, swap_dir.LOCK_NAME), "w").close()  # nobody holds the lock
    unrelated = os.path.join(root, "keep-me")
    os.makedirs(unrelated)
    assert remove_stale(root) == [dead]
    assert os.path.isdir(alive.path) and os.path.isdir(unrelated)
    alive.close()


def test_a_killed_job_leaves_nothing_for_the_next_start(root):
    code = (f"import os, signal; from zerospeed.zero.offload.swap_dir import SwapDirectory; "
            f"d = SwapDirectory({root!r}, 0); open(d.file('chunk.swp'), 'wb').write(b'x' * 100); "
            f"print(d.path, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ZEROSPEED_JOB_ID": "crashed"})
    assert done.returncode == -signal.SIGKILL
    left = done.stdout.strip()
    assert os.path.isdir(left)  # SIGKILL ran no cleanup
    fresh = SwapDirectory(root, rank=0)
    assert not os.path.exists(left)
    fresh.close()


def test_same_job_restarting_reuses_its_name_after_a_crash(root, monkeypatch):
    monkeypatch.setenv("ZEROSPEED_JOB_ID", "again")
    stale = os.path.join(root, "zerospeed-swap-again-rank0")
    os.makedirs(stale)
    open(os.path.join(stale, "old.swp"), "w").close()
    directory = SwapDirectory(root, rank=0)
    assert directory.path == stale and sorted(os.listdir(stale)) == ["owner.json", "owner.lock"]
    directory.close()


def test_tiers_of_one_process_share_the_directory(root):
    first = open_swap_directory(root, 0, "key", rank=0)
    second = open_swap_directory(root, 0, "key", rank=0)
    assert first is second
    assert first.file("x") != second.file("x")
    first.close()


def test_missing_path_is_a_config_error(root):
    missing = os.path.join(root, "nope")
    with pytest.raises(ConfigError, match="does not exist") as raised:
        check_path(missing, 123, "zero_optimization.offload_optimizer.nvme_path")
    assert missing in str(raised.value) and "offload_optimizer.nvme_path" in str(raised.value)


def test_too_small_path_names_bytes_needed_and_available(root, monkeypatch):
    small = os.path.join(root, "small")
    os.makedirs(small)
    mounted = _try_mount(small, "size=1m")
    if not mounted:
        Usage = namedtuple("Usage", "total used free")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 20, 0, 1 << 20))
    try:
        with pytest.raises(ConfigError) as raised:
            check_path(small, 10 << 20, "zero_optimization.offload_param.nvme_path")
        message = str(raised.value)
        assert small in message and str(10 << 20) in message and "bytes available" in message
        check_path(small, 1000, "key")  # enough room: fine
    finally:
        if mounted:
            subprocess.run(["umount", small], check=False)


def test_read_only_path_is_a_config_error(root, monkeypatch):
    read_only = os.path.join(root, "ro")
    os.makedirs(read_only)
    mounted = _try_mount(read_only, "size=1m,ro")
    if not mounted:
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            check_path(read_only, 10, "zero_optimization.offload_optimizer.nvme_path")
    finally:
        if mounted:
            subprocess.run(["umount", read_only], check=False)
