"""Where a rank's swap files live: `<nvme_path>/zerospeed-swap-<job id>-rank<r>/`, and its hygiene.

- The directory is created empty at start and removed when the tier closes (engine
  destruction) or the process exits (atexit); swap files are scratch, never resumed from.
- A directory whose owner died (crash, SIGKILL) is removed by the next start on the same
  host: each directory holds `owner.lock`, flock'ed by its live owner for its whole life,
  so a lock we can take means the owner is gone.
- `nvme_path` must exist, be writable and have room for the bytes the tier will write:
  otherwise a ConfigError names the path, the bytes needed and the bytes available,
  before any training starts.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing.util
import os
import shutil
import socket
import time
import uuid
import itertools
import weakref

from zerospeed.errors import ConfigError

PREFIX = "zerospeed-swap-"
_serial = itertools.count()
LOCK_NAME = "owner.lock"


def job_id() -> str:
    """The launcher's job id where there is one (torchrun, Slurm), else this process's id."""
    for key in ("ZEROSPEED_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        value = os.environ.get(key)
        if value and value != "none":
            return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)
    return f"pid{os.getpid()}"


def check_path(path: str, needed_bytes: int, key: str) -> None:
    """Raise ConfigError unless `path` is an existing, writable directory with `needed_bytes` free."""
    if not os.path.isdir(path):
        raise ConfigError(f"{key}={path!r}: the directory does not exist; create it or point {key} at an existing "
                          f"directory on a local disk with at least {needed_bytes} bytes free")
    if not os.access(path, os.W_OK | os.X_OK) or _read_only_mount(path):
        raise ConfigError(f"{key}={path!r}: the directory is not writable; swap files need {needed_bytes} bytes there")
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise ConfigError(f"{key}={path!r}: not enough free space for the swapped states: {needed_bytes} bytes "
                          f"needed, {free} bytes available")


def _read_only_mount(path: str) -> bool:
    """os.access ignores a read-only mount for root; statvfs does not."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def remove_stale(path: str) -> list[str]:
    """Remove swap directories under `path` whose owner process is gone; returns those removed."""
    removed = []
    try:
        names = os.listdir(path)
    except OSError:
        return removed
    for name in names:
        directory = os.path.join(path, name)
        if not os.path.isdir(directory):
            continue
        if name.startswith(f".{PREFIX}building-"):  # a start that died mid-creation (give live ones a minute)
            if time.time() - os.path.getmtime(directory) > 60 and _owner_is_gone(directory):
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
            continue
        if not name.startswith(PREFIX):
            continue
        if _owner_is_gone(directory):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def _owner_is_gone(directory: str) -> bool:
    lock = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return _owner_file_says_gone(directory)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live process holds it
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def _owner_file_says_gone(directory: str) -> bool:
    """No lock file (a start that died before creating it): gone unless a live local pid owns it."""
    try:
        with open(os.path.join(directory, "owner.json")) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return True
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return True
    except PermissionError:
        return False
    return False


class SwapDirectory:
    """This rank's swap directory: created at start, locked while alive, removed at close/exit."""

    def __init__(self, nvme_path: str, rank: int) -> None:
        remove_stale(nvme_path)
        self.path = os.path.join(nvme_path, f"{PREFIX}{job_id()}-rank{rank}")
        if os.path.exists(self.path):
            if not _owner_is_gone(self.path):
                raise ConfigError(f"swap directory {self.path} belongs to a running process; give each job its own "
                                  "ZEROSPEED_JOB_ID or nvme_path")
            shutil.rmtree(self.path)
        # Built under a hidden name, locked, then renamed: another rank's stale sweep never sees
        # a swap directory that has no live lock yet.
        building = os.path.join(nvme_path, f".{PREFIX}building-{uuid.uuid4().hex}")
        os.makedirs(building)
        with open(os.path.join(building, "owner.json"), "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        self._lock_fd = os.open(os.path.join(building, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(building, self.path)
        # Runs when the tier owning this directory is collected (engine destruction) or at exit;
        # multiprocessing children leave through os._exit, skipping atexit, but run these.
        self._finalizer = weakref.finalize(self, _remove, self.path, self._lock_fd)
        multiprocessing.util.Finalize(self, self._finalizer, exitpriority=10)

    def file(self, name: str) -> str:
        """A new file name in the directory, unique among every tier sharing it."""
        return os.path.join(self.path, f"{next(_serial)}-{name}")

    def close(self) -> None:
        self._finalizer()


def open_swap_directory(nvme_path: str, needed_bytes: int, key: str, rank: int, group=None) -> SwapDirectory:
    """Check `nvme_path` on every rank, agree on the outcome (so no rank goes on alone into a
    collective), then create this rank's swap directory."""
    error = None
    try:
        check_path(nvme_path, needed_bytes, key)
    except ConfigError as raised:
        error = raised
    _agree(error, rank, group)
    key_path = os.path.join(os.path.realpath(nvme_path), f"{PREFIX}{job_id()}-rank{rank}")
    directory = _open.get(key_path)
    if directory is None:  # tiers of one process (params, optimizer, other engines) share it
        directory = _open[key_path] = SwapDirectory(nvme_path, rank)
    return directory


_open: "weakref.WeakValueDictionary[str, SwapDirectory]" = weakref.WeakValueDictionary()


def _agree(error: ConfigError | None, rank: int, group) -> None:
    from zerospeed import comm

    failed = error is not None
    if comm.is_initialized() and comm.get_world_size(group) > 1:
        import torch

        flag = torch.tensor([1.0 if failed else 0.0])
        comm.all_reduce(flag, group=group)
        if flag.item() and not failed:
            raise ConfigError(f"NVMe offload: {int(flag.item())} other rank(s) found their nvme_path unusable "
                              "(see their errors); this rank stops too")
    if error is not None:
        raise error


def close_files(files: list) -> None:
    for file in files:
        file.close()


def _remove(path: str, lock_fd: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.close(lock_fd)
    except OSError:
        pass
