"""`zerospeed.comm`: process-group start-up and torch.distributed-style collectives.

The only place in zerospeed that imports torch.distributed; everything else calls these
functions so that comm logging and rank-naming timeouts apply everywhere.
"""

from __future__ import annotations

import datetime
import os

import torch.distributed as dist

from zerospeed.comm import groups
from zerospeed.comm.collectives import (
    ReduceOp,
    all_gather,
    all_gather_into_tensor,
    all_gather_object,
    all_reduce,
    all_to_all,
    all_to_all_single,
    barrier,
    broadcast,
    broadcast_object_list,
    comm_log,
    get_step,
    irecv,
    isend,
    recv,
    reduce,
    reduce_scatter_tensor,
    send,
    set_default_timeout,
    set_step,
)
from zerospeed.comm.env import detect_launch_env, export_launch_env, parse_nodelist
from zerospeed.errors import CommError, ConfigError

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)
_BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl", "ccl", "hccl")


def _timeout_from(timeout) -> datetime.timedelta:
    """The explicit timeout, else ZEROSPEED_COMM_TIMEOUT (seconds), else DEEPSPEED_TIMEOUT (minutes)."""
    if timeout is None:
        seconds = os.environ.get("ZEROSPEED_COMM_TIMEOUT")
        minutes = os.environ.get("DEEPSPEED_TIMEOUT")
        try:
            if seconds:
                return datetime.timedelta(seconds=float(seconds))
            if minutes:
                return datetime.timedelta(minutes=float(minutes))
        except ValueError:
            raise ConfigError(
                f"ZEROSPEED_COMM_TIMEOUT={seconds!r} / DEEPSPEED_TIMEOUT={minutes!r}: expected a number"
            ) from None
        return DEFAULT_TIMEOUT
    if isinstance(timeout, (int, float)):
        return datetime.timedelta(seconds=timeout)
    return timeout


def init_distributed(
    dist_backend: str | None = None,
    auto_mpi_discovery: bool = True,
    distributed_port: int = 29500,
    verbose: bool = True,
    timeout: datetime.timedelta | float | None = None,
    init_method: str | None = None,
    dist_init_required: bool | None = None,
    config=None,
    rank: int = -1,
    world_size: int = -1,
) -> None:
    """Start the default process group once (DeepSpeed's signature; extra args accepted).

    Reads torchrun, Open MPI or Slurm variables. A process started alone becomes a
    world of one on a free local port, so single-process scripts need no launcher.
    """
    if dist.is_initialized():
        return
    from zerospeed.accelerator import get_accelerator

    backend = dist_backend or get_accelerator().communication_backend_name()
    if backend not in _BACKENDS:
        raise ConfigError(f"dist_backend={backend!r} is not a torch.distributed backend; allowed: {', '.join(_BACKENDS)}")
    timeout = _timeout_from(timeout)
    env = detect_launch_env(distributed_port) if auto_mpi_discovery or "RANK" in os.environ else None
    if env is None and rank < 0:
        from zerospeed.comm.ports import free_port

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    elif env is not None:
        export_launch_env(env)
    if backend == "nccl":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kwargs = {"backend": backend, "timeout": timeout}
    if init_method:
        kwargs["init_method"] = init_method
    if rank >= 0:
        kwargs.update(rank=rank, world_size=world_size)
    try:
        dist.init_process_group(**kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise CommError(
            f"init_distributed(backend={backend!r}) failed on rank {os.environ.get('RANK')} of "
            f"{os.environ.get('WORLD_SIZE')} at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: {error}"
        ) from error
    set_default_timeout(timeout)


def is_available() -> bool:
    return dist.is_available()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank(group=None) -> int:
    return dist.get_rank(group) if is_initialized() else 0


def get_world_size(group=None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def get_global_rank(group=None, group_rank: int = 0) -> int:
    """The global rank of `group_rank` within `group` (DeepSpeed's helper)."""
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def get_backend(group=None) -> str:
    return dist.get_backend(group)


def new_group(ranks=None, timeout=None, backend=None):
    """A subgroup; its timeout defaults to init_distributed's, not torch's 30-minute default."""
    from zerospeed.comm import collectives

    timeout = collectives.get_default_timeout() if timeout is None else _timeout_from(timeout)
    return dist.new_group(ranks=ranks, timeout=timeout, backend=backend)


def destroy_process_group(group=None) -> None:
    if is_initialized():
        dist.destroy_process_group(group)
        if group is None:
            groups.reset_grid()


def log_summary(show_straggler: bool = False, return_dict: bool = False):
    """Print this rank's comm log as a table on rank 0 (DeepSpeed's `comm.log_summary`).

    No collective is issued, so calling it on some ranks only cannot hang. With
    `return_dict=True` every rank returns `{"summary": comm_log.summary()}`.
    `show_straggler` is accepted for DeepSpeed scripts; cross-rank straggler figures are
    not computed.
    """
    if get_rank() == 0:
        print(f"Comm. Op summary (rank 0, {sum(comm_log.calls.values())} calls)\n{comm_log.format_table()}", flush=True)
    return {"summary": comm_log.summary()} if return_dict else None


def reset_log() -> None:
    comm_log.reset()


__all__ = [
    "ReduceOp", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce",
    "all_to_all", "all_to_all_single", "barrier", "broadcast", "broadcast_object_list", "comm_log",
    "destroy_process_group", "get_backend", "get_global_rank", "get_local_rank", "get_rank",
    "get_step", "get_world_size", "groups", "init_distributed", "irecv", "is_available",
    "is_initialized", "isend", "log_summary", "new_group", "parse_nodelist", "recv", "reduce",
    "reduce_scatter_tensor", "reset_log", "send", "set_step",
]
