"""Read rank, world size and rendezvous address from torchrun, MPI or Slurm environments."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from zerospeed.errors import ConfigError


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str
    source: str


def _first(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return value
    return None


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = _first(environ, name)
    if value is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is missing; the launcher should set it")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def detect_launch_env(default_port: int = 29500, environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The launch environment, or None when this process was started alone.

    torchrun's variables win; Open MPI (OMPI_COMM_WORLD_*), MPICH/Intel MPI (PMI_*) and
    Slurm (SLURM_PROCID...) are translated so that `mpirun` and `srun` launches work without
    a wrapper script. MASTER_ADDR, when not set, is Slurm's first node (or the launch
    node's address), else localhost; MASTER_PORT defaults to `default_port`.
    """
    environ = os.environ if environ is None else environ
    if _first(environ, "RANK") is not None and _first(environ, "WORLD_SIZE") is not None:
        source = "torchrun"
        rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
        local = _int(environ, "LOCAL_RANK", 0)
    elif _first(environ, "OMPI_COMM_WORLD_RANK") is not None:
        source = "mpi"
        rank, world = _int(environ, "OMPI_COMM_WORLD_RANK"), _int(environ, "OMPI_COMM_WORLD_SIZE")
        local = _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK", 0)
    elif _first(environ, "PMI_RANK") is not None and _first(environ, "PMI_SIZE") is not None:
        source = "mpi"
        rank, world = _int(environ, "PMI_RANK"), _int(environ, "PMI_SIZE")
        local = _int(environ, "MPI_LOCALRANKID", 0)
    elif _first(environ, "SLURM_PROCID") is not None and _first(environ, "SLURM_NTASKS") is not None:
        source = "slurm"
        rank, world = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
        local = _int(environ, "SLURM_LOCALID", 0)
    else:
        return None
    if not 0 <= rank < world:
        raise ConfigError(f"{source} environment gives rank {rank} outside world size {world}")
    addr = _first(environ, "MASTER_ADDR") or _slurm_master_addr(environ) or "127.0.0.1"
    port = _first(environ, "MASTER_PORT") or str(default_port)
    return LaunchEnv(rank, world, local, addr, port, source)


def _slurm_master_addr(environ: Mapping[str, str]) -> str | None:
    nodelist = _first(environ, "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_STEP_NODELIST")
    if nodelist:
        hosts = parse_nodelist(nodelist)
        if hosts:
            return hosts[0]
    return _first(environ, "SLURM_LAUNCH_NODE_IPADDR")


_BRACKET = re.compile(r"\[([^\]]*)\]")


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list: `node[01-03,07],gpu5` -> node01 node02 node03 node07 gpu5.

    Zero padding of a range is kept (`[08-10]` -> 08 09 10). Several bracket groups in one
    name expand as their product, first group outermost, as `scontrol show hostnames` does.
    """
    hosts: list[str] = []
    for name in _split_outside_brackets(nodelist.strip()):
        hosts.extend(_expand_name(name))
    return hosts


def _split_outside_brackets(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    if depth != 0:
        raise ConfigError(f"Slurm nodelist {text!r} has unbalanced brackets")
    return [part.strip() for part in parts if part.strip()]


def _expand_name(name: str) -> list[str]:
    match = _BRACKET.search(name)
    if match is None:
        return [name]
    head, tail = name[: match.start()], name[match.end():]
    return [f"{head}{item}{rest}" for item in _expand_range_list(match.group(1), name) for rest in _expand_name(tail)]


def _expand_range_list(body: str, name: str) -> list[str]:
    items = []
    for piece in body.split(","):
        piece = piece.strip()
        low, sep, high = piece.partition("-")
        if not sep:
            items.append(piece)
            continue
        if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
            raise ConfigError(f"Slurm nodelist {name!r}: range {piece!r} is not low-high with digits")
        width = len(low)
        items.extend(str(number).zfill(width) for number in range(int(low), int(high) + 1))
    return items


def export_launch_env(env: LaunchEnv) -> None:
    """Write the torchrun-style variables that torch's env:// rendezvous reads."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=env.master_port,
    )


def record_uncaught_exceptions() -> None:
    """Under a torch elastic agent, write an uncaught exception to TORCHELASTIC_ERROR_FILE.

    The agent then knows what failed ("ValueError: bad batch") and when, so the launcher's
    one-line failure report can tell the rank that raised from the peers whose next
    collective failed because it was gone. Scripts decorated with torch's `@record` get
    the same; this spares DeepSpeed scripts the decorator.
    """
    import sys

    if not os.environ.get("TORCHELASTIC_ERROR_FILE") or getattr(sys.excepthook, "_zerospeed_records", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        _write_error_file(os.environ.get("TORCHELASTIC_ERROR_FILE", ""), kind, value, tb)
        previous(kind, value, tb)

    hook._zerospeed_records = True
    sys.excepthook = hook


def _write_error_file(path: str, kind, value, tb) -> None:
    import json
    import time
    import traceback

    if not path:
        return
    data = {"message": {"message": f"{kind.__name__}: {value}", "extraInfo": {
        "py_callstack": "".join(traceback.format_exception(kind, value, tb)), "timestamp": str(int(time.time())),
    }}}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except OSError:
        pass  # the report degrades to the exit code; never hide the original exception
