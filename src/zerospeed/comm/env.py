"""Read rank, world size and rendezvous address from torchrun, MPI or Slurm environments."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: str
    source: str


def _first(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return None


def detect_launch_env(default_port: int = 29500) -> LaunchEnv | None:
    """The launch environment, or None when this process was started alone.

    torchrun's variables win; Open MPI (OMPI_COMM_WORLD_*) and Slurm (SLURM_PROCID...) are
    translated so that `mpirun` and `srun` launches work without a wrapper script.
    """
    if _first("RANK") is not None and _first("WORLD_SIZE") is not None:
        source = "torchrun"
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(_first("LOCAL_RANK") or 0)
    elif _first("OMPI_COMM_WORLD_RANK") is not None:
        source = "mpi"
        rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
        world = int(os.environ["OMPI_COMM_WORLD_SIZE"])
        local = int(_first("OMPI_COMM_WORLD_LOCAL_RANK") or 0)
    elif _first("SLURM_PROCID") is not None and _first("SLURM_NTASKS") is not None:
        source = "slurm"
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local = int(_first("SLURM_LOCALID") or 0)
    else:
        return None
    addr = _first("MASTER_ADDR") or _slurm_first_host() or "127.0.0.1"
    port = _first("MASTER_PORT") or str(default_port)
    return LaunchEnv(rank, world, local, addr, port, source)


def _slurm_first_host() -> str | None:
    nodelist = _first("SLURM_LAUNCH_NODE_IPADDR")
    return nodelist


def export_launch_env(env: LaunchEnv) -> None:
    """Write the torchrun-style variables that torch's env:// rendezvous reads."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=env.master_port,
    )
