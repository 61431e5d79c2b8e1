"""`zerospeed.comm`: process-group start-up and torch.distributed-style collectives.

The only place in zerospeed that imports torch.distributed; everything else calls these
functions so that comm logging and rank-naming timeouts apply everywhere.
"""

from __future__ import annotations

import datetime
import os

import torch.distributed as dist

from zerospeed.comm import collectives, groups
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
from zerospeed.comm.env import detect_launch_env, export_launch_env, parse_nodelist, record_uncaught_exceptions
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
    record_uncaught_exceptions()
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


def get_world_group():
    """The world group object (DeepSpeed's `comm.get_world_group`); torch's rank helpers take only objects, not None."""
    return dist.group.WORLD


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


def configure(deepspeed_config=None, enabled=None, prof_all=None, prof_ops=None, verbose=None, debug=None) -> None:
    """DeepSpeed's `comm.configure`: the config's `comms_logger` section (when enabled), then explicit settings."""
    if deepspeed_config is not None:
        configure_logger(_comms_section(deepspeed_config))
    for key, value in (("enabled", enabled), ("prof_all", prof_all), ("verbose", verbose), ("debug", debug)):
        if value is not None:
            setattr(comm_log, key, bool(value))
    if prof_ops is not None:
        comm_log.prof_ops = list(prof_ops)


def configure_logger(section) -> None:
    """Apply a validated `comms_logger` section (the engine calls this); a disabled one changes nothing."""
    comm_log.configure(section)


def _comms_section(config):
    section = getattr(config, "comms_logger", None)
    if section is None and isinstance(config, dict):
        section = config.get("comms_logger", {})
    if isinstance(section, dict):
        from zerospeed.config.comms import CommsLoggerConfig

        section = CommsLoggerConfig(**section)
    return section


def log_summary(show_straggler: bool = False, return_dict: bool = False):
    """Print the comm log as DeepSpeed's table on rank 0 (`deepspeed.comm.log_summary`).

    Rows: per op (record name), per message size: count, total and mean latency, algorithmic
    and bus bandwidth in Gbps. Without `show_straggler` no collective is issued, so calling
    it on some ranks only cannot hang. `show_straggler=True` is a collective (every rank must
    call it): per row, the lowest total latency over ranks and this rank's excess over it.
    With `return_dict=True` every rank returns DeepSpeed's dict
    (`summary`, `straggler_analysis`, `metadata`).
    """
    import datetime as _datetime

    straggler = _straggler_analysis() if show_straggler else None
    if get_rank() == 0:
        print(comm_log.format_table(), flush=True)
        if straggler:
            print(_format_straggler(straggler), flush=True)
    if not return_dict:
        return None
    return {
        "summary": comm_log.summary(),
        "straggler_analysis": straggler,
        "metadata": {"world_size": get_world_size(), "rank": get_rank(), "timestamp": _datetime.datetime.now().isoformat()},
    }


def _straggler_analysis() -> dict:
    """{name: {size: {total_comm_lat_ms, total_straggler_ms, ...}}} from every rank's totals (one all_gather_object)."""
    mine = {name: {size: (stats.seconds, stats.timed) for size, stats in sizes.items()} for name, sizes in comm_log.records.items()}
    everyone = [None] * get_world_size()
    all_gather_object(everyone, mine)
    result: dict = {}
    for name, sizes in mine.items():
        for size, (seconds, timed) in sizes.items():
            lowest = min(rank_log.get(name, {}).get(size, (seconds, timed))[0] for rank_log in everyone)
            count = max(timed, 1)
            result.setdefault(name, {})[size] = {
                "count": timed, "total_comm_lat_ms": lowest * 1e3, "total_straggler_ms": (seconds - lowest) * 1e3,
                "avg_comm_lat_ms": lowest * 1e3 / count, "avg_straggler_ms": (seconds - lowest) * 1e3 / count,
                "msg_size_bytes": size, "msg_size_str": collectives.convert_size(size),
            }
    return result


def _format_straggler(analysis: dict) -> str:
    columns = ("Comm. Op", "Message Size", "Count", "Total comm lat(ms)", "Total straggler(ms)", "Avg comm lat(ms)",
               "Avg straggler(ms)")
    lines = ["_______________________________", "Breakdown with straggler effect", "-------------------------------",
             "".join(f"{c: <20}" for c in columns)]
    for name, sizes in analysis.items():
        lines.append(name)
        for e in sizes.values():
            lines.append(f"{' ': <20}{e['msg_size_str']: <20}{e['count']: <20}{e['total_comm_lat_ms']: <20.2f}"
                         f"{e['total_straggler_ms']: <20.2f}{e['avg_comm_lat_ms']: <20.2f}{e['avg_straggler_ms']: <20.2f}")
    return "\n".join(lines)


def reset_log() -> None:
    comm_log.reset()


def has_comm_data() -> bool:
    return bool(comm_log.records)


def get_comm_operation_count() -> int:
    return sum(comm_log.calls.values())


def get_logged_comm_ops() -> list[str]:
    return list(comm_log.records)


__all__ = [
    "ReduceOp", "all_gather", "all_gather_into_tensor", "all_gather_object", "all_reduce",
    "all_to_all", "all_to_all_single", "barrier", "broadcast", "broadcast_object_list", "comm_log",
    "configure", "configure_logger", "destroy_process_group", "get_backend", "get_comm_operation_count",
    "get_logged_comm_ops", "has_comm_data", "get_global_rank", "get_local_rank", "get_rank",
    "get_step", "get_world_group", "get_world_size", "groups", "init_distributed", "irecv", "is_available",
    "is_initialized", "isend", "log_summary", "new_group", "parse_nodelist", "recv", "reduce",
    "reduce_scatter_tensor", "reset_log", "send", "set_step",
]
