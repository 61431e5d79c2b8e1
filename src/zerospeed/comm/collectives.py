"""Collectives over torch.distributed with byte counting and errors that name rank and op.

Every collective the runtime issues goes through `_call`, which (a) records the op and
its payload in the comm log, and (b) turns a backend timeout or failure into a
`CommError` naming this rank, the op, the tensor and the training step (`set_step`),
instead of a trace from inside gloo or NCCL. Async handles are wrapped so that `wait()`
fails the same way. On a timeout this rank's Python stack is dumped to stderr, so a hang
leaves a clue. Timeouts themselves come from the process group (`init_distributed(timeout=)`).
"""

from __future__ import annotations

import datetime
import faulthandler
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from zerospeed.errors import CommError

ReduceOp = dist.ReduceOp


# Bus-bandwidth factor per op for a group of n ranks (nccl-tests' PERFORMANCE.md, which
# DeepSpeed's calc_bw_log follows): busbw = algbw * factor, algbw = message bytes / latency.
# The message of all_gather / reduce_scatter / all_to_all is the full (gathered or
# scattered) buffer; of all_reduce and point-to-point ops, the tensor itself.
_RING_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "all_gather_into_tensor": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "reduce_scatter_tensor": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "all_to_all_single": lambda n: (n - 1) / n,
}


def bus_bandwidth_factor(op: str, group_size: int) -> float:
    """busbw / algbw for `op` over `group_size` ranks (1 for broadcast, reduce, p2p, barrier)."""
    factor = _RING_FACTORS.get(op)
    return factor(group_size) if factor is not None and group_size > 0 else 1.0


def convert_size(nbytes: int) -> str:
    """DeepSpeed's human-readable message size: 0B, 512.0 B, 1.5 KB, 3.25 MB ..."""
    if nbytes <= 0:
        return "0B"
    names = ("B", "KB", "MB", "GB", "TB", "PB")
    index = min(int(math.floor(math.log(nbytes, 1024))), len(names) - 1)
    return f"{round(nbytes / math.pow(1024, index), 2)} {names[index]}"


@dataclass
class SizeStats:
    """Calls of one op with one message size: counts and running sums (no per-call lists)."""

    count: int = 0  # calls issued
    timed: int = 0  # calls whose latency is known (async ones once waited on)
    seconds: float = 0.0
    algbw_sum: float = 0.0  # Gbps, summed over timed calls
    busbw_sum: float = 0.0

    def add_latency(self, nbytes: int, seconds: float, factor: float) -> tuple[float, float]:
        algbw = nbytes * 8 / seconds / 1e9 if seconds > 0 else 0.0
        self.timed += 1
        self.seconds += seconds
        self.algbw_sum += algbw
        self.busbw_sum += algbw * factor
        return algbw, algbw * factor

    def as_dict(self, nbytes: int) -> dict[str, Any]:
        timed = max(self.timed, 1)
        return {
            "count": self.count,
            "total_latency_ms": self.seconds * 1e3,
            "avg_latency_ms": self.seconds * 1e3 / timed,
            "tput_avg_gbps": self.algbw_sum / timed,
            "busbw_avg_gbps": self.busbw_sum / timed,
            "msg_size_bytes": nbytes,
            "msg_size_str": convert_size(nbytes),
        }


class _Pending:
    """One logged call waiting for its latency (an async op until `wait()`)."""

    __slots__ = ("stats", "nbytes", "factor", "name", "started")

    def __init__(self, stats: SizeStats, nbytes: int, factor: float, name: str, started: float) -> None:
        self.stats, self.nbytes, self.factor, self.name, self.started = stats, nbytes, factor, name, started


class CommLog:
    """DeepSpeed's comms logger: per op and message size, calls, latency, algbw and busbw.

    Counting is always on (a dict update per call), so benchmarks and tests can read the
    bytes of a step without configuring anything. The `comms_logger` config section
    (`configure`) decides the rest as in DeepSpeed: `enabled` makes the engine print the
    table every `steps_per_print` and makes latencies exact by synchronizing the device
    after each op; with `enabled`, `prof_all: false` records only the ops in `prof_ops`;
    `verbose` prints every op as it completes; `debug` adds the calling function to the
    record name. Latency of an async op is measured when its `wait()` returns.
    Averages are plain means over the calls (DeepSpeed trims 10% outliers from stored lists).
    """

    def __init__(self) -> None:
        self.enabled = False
        self.prof_all = True
        self.prof_ops: list[str] = []
        self.verbose = False
        self.debug = False
        self.reset()

    def reset(self) -> None:
        self.records: dict[str, dict[int, SizeStats]] = {}
        self.calls: dict[str, int] = defaultdict(int)  # by raw op name
        self.bytes: dict[str, int] = defaultdict(int)

    # -- settings (DeepSpeed's CommsLogger methods) ------------------------------------------
    def configure(self, section: Any) -> None:
        """Apply a `comms_logger` config section when it is enabled (DeepSpeed leaves the logger alone otherwise)."""
        if not getattr(section, "enabled", False):
            return
        self.enabled = True
        self.prof_all = bool(section.prof_all)
        self.prof_ops = list(section.prof_ops)
        self.verbose = bool(section.verbose)
        self.debug = bool(section.debug)

    def start_profiling_comms(self) -> None:
        self.prof_all = True

    def stop_profiling_comms(self) -> None:
        self.prof_all = False

    def start_profiling_op(self, op_names: list[str]) -> None:
        self.prof_ops = sorted(set(self.prof_ops) | set(op_names))

    def stop_profiling_op(self, op_names: list[str]) -> None:
        self.prof_ops = [op for op in self.prof_ops if op not in op_names]

    # -- recording -------------------------------------------------------------------------------
    def should_record(self, name: str, prof: bool = False) -> bool:
        return prof or not self.enabled or self.prof_all or name in self.prof_ops

    def begin(self, op: str, name: str, nbytes: int, group_size: int, started: float) -> _Pending:
        """Count a call now; its latency follows with `end` (at once, or at `wait()`)."""
        self.calls[op] += 1
        self.bytes[op] += nbytes
        stats = self.records.setdefault(name, {}).setdefault(nbytes, SizeStats())
        stats.count += 1
        return _Pending(stats, nbytes, bus_bandwidth_factor(op, group_size), name, started)

    def end(self, pending: _Pending, finished: float) -> None:
        seconds = max(finished - pending.started, 0.0)
        algbw, busbw = pending.stats.add_latency(pending.nbytes, seconds, pending.factor)
        if self.verbose and _rank() == 0:
            print(f"comm op: {pending.name} | time (ms): {seconds * 1e3:.2f} | msg size: {convert_size(pending.nbytes)} "
                  f"| algbw (Gbps): {algbw:.2f} | busbw (Gbps): {busbw:.2f}", flush=True)

    def record(self, op: str, nbytes: int, seconds: float, group_size: int = 1, name: str | None = None) -> None:
        """Log one completed call (what `_call` does for a blocking op)."""
        self.end(self.begin(op, name or op, nbytes, group_size, 0.0), seconds)

    # -- reading ---------------------------------------------------------------------------------
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def totals(self) -> dict[str, dict[str, int]]:
        """{op: {"calls", "bytes"}} by raw op name: what a step moved, for accounting."""
        return {op: {"calls": self.calls[op], "bytes": self.bytes[op]} for op in sorted(self.calls)}

    def summary(self) -> dict[str, dict[int, dict[str, Any]]]:
        """DeepSpeed's `log_summary(return_dict=True)["summary"]`: {record name: {message bytes: stats}}."""
        return {name: {size: stats.as_dict(size) for size, stats in sorted(sizes.items())}
                for name, sizes in self.records.items()}

    def format_table(self) -> str:
        """DeepSpeed's table: one block per op, one row per message size, then a total line."""
        columns = ("Comm. Op", "Message Size", "Count", "Total Latency(ms)", "Avg Latency(ms)",
                   "tput_avg (Gbps)", "busbw_avg (Gbps)")
        lines = ["".join(f"{c: <20}" for c in columns)]
        for name, sizes in self.summary().items():
            lines.append(name)
            for entry in sizes.values():
                lines.append(f"{' ': <20}{entry['msg_size_str']: <20}{entry['count']: <20}{entry['total_latency_ms']: <20.2f}"
                             f"{entry['avg_latency_ms']: <20.2f}{entry['tput_avg_gbps']: <20.2f}{entry['busbw_avg_gbps']: <20.2f}")
        lines.append(f"total: {sum(self.calls.values())} calls, {convert_size(self.total_bytes())} "
                     f"({self.total_bytes()} bytes)")
        return "\n".join(lines)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


comm_log = CommLog()
_timeout = datetime.timedelta(minutes=30)
_step: int | None = None


def set_default_timeout(timeout: datetime.timedelta) -> None:
    global _timeout
    _timeout = timeout


def get_default_timeout() -> datetime.timedelta:
    return _timeout


def set_step(step: int | None) -> None:
    """Record the training step the engine is in, so comm errors can say "at step n"."""
    global _step
    _step = None if step is None else int(step)


def get_step() -> int | None:
    return _step


def _describe(tensor: Any) -> str:
    if isinstance(tensor, torch.Tensor):
        return f"tensor shape={tuple(tensor.shape)} dtype={tensor.dtype}"
    return type(tensor).__name__


def _nbytes(tensor: Any) -> int:
    if isinstance(tensor, torch.Tensor):
        return tensor.numel() * tensor.element_size()
    if isinstance(tensor, (list, tuple)):
        return sum(_nbytes(t) for t in tensor)
    return 0


class _CheckedWork:
    """Wraps an async handle so `wait()` failures also name the op, rank and step.

    The call and its bytes are logged when the op is issued; its latency (issue to the
    end of the first `wait()`) when that wait returns.
    """

    def __init__(self, work: Any, op: str, what: str, pending: "_Pending | None") -> None:
        self._work, self._op, self._what, self._pending = work, op, what, pending

    def wait(self, timeout: datetime.timedelta | None = None) -> bool:
        try:
            done = self._work.wait() if timeout is None else self._work.wait(timeout)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise _comm_error(self._op, self._what, error) from error
        if self._pending is not None:
            _finish(self._pending)
            self._pending = None
        return done

    def is_completed(self) -> bool:
        return self._work.is_completed()

    def __getattr__(self, name: str) -> Any:
        # get_future, exception, source_rank, result...: the torch Work's own answer.
        return getattr(self._work, name)


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timeout" in text or "timed out" in text


def _comm_error(op: str, what: str, error: BaseException) -> CommError:
    rank = dist.get_rank() if dist.is_initialized() else -1
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    timed_out = _is_timeout(error)
    where = f" at step {_step}" if _step is not None else ""
    if timed_out:
        _dump_stack(rank, op, where)
    return CommError(
        f"rank {rank}: {op}{where} on {what} {'timed out' if timed_out else 'failed'} "
        f"(process-group timeout {_timeout.total_seconds():g}s). "
        f"A rank that never reaches the same collective (a mismatched call, an exception, an "
        f"uneven number of batches) causes this. Backend said: {text}"
    )


def _dump_stack(rank: int, op: str, where: str) -> None:
    """Every thread's Python stack to stderr: where this rank was when the peer went missing."""
    try:
        sys.stderr.write(f"[zerospeed] rank {rank}: {op}{where} timed out; Python stacks of this rank:\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except (OSError, ValueError, AttributeError):  # stderr closed or not a real file
        pass


def _finish(pending: _Pending) -> None:
    if comm_log.enabled:  # exact latency: the op has run on the device, not just been queued
        from zerospeed.accelerator import get_accelerator

        get_accelerator().synchronize()
    comm_log.end(pending, time.perf_counter())


def _call(op: str, tensor: Any, fn: Callable[[], Any], async_op: bool, group=None,
          prof: bool = False, log_name: str | None = None) -> Any:
    if not dist.is_initialized():
        raise CommError(f"{op} called before init_distributed(); call zerospeed.init_distributed() first")
    what = _describe(tensor)
    name = log_name or op
    pending = None
    if comm_log.should_record(name, prof):
        if comm_log.debug:
            name = f"{name} | [Caller Func: {sys._getframe(2).f_code.co_name}]"
        size = dist.get_world_size(group) if op in _RING_FACTORS else 1
        pending = comm_log.begin(op, name, _nbytes(tensor), size, time.perf_counter())
    try:
        work = fn()
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise _comm_error(op, what, error) from error
    if async_op:
        return _CheckedWork(work, op, what, pending)
    if pending is not None:
        _finish(pending)
    return None


def all_reduce(tensor: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False, prof: bool = False,
               log_name: str | None = None):
    return _call("all_reduce", tensor, lambda: dist.all_reduce(tensor, op=op, group=group, async_op=async_op), async_op,
                 group, prof, log_name)


def reduce(tensor: torch.Tensor, dst: int, op=ReduceOp.SUM, group=None, async_op: bool = False, prof: bool = False,
           log_name: str | None = None):
    return _call("reduce", tensor, lambda: dist.reduce(tensor, dst, op=op, group=group, async_op=async_op), async_op,
                 group, prof, log_name)


def broadcast(tensor: torch.Tensor, src: int, group=None, async_op: bool = False, prof: bool = False,
              log_name: str | None = None):
    return _call("broadcast", tensor, lambda: dist.broadcast(tensor, src, group=group, async_op=async_op), async_op,
                 group, prof, log_name)


def reduce_scatter_tensor(output: torch.Tensor, input: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False,
                          prof: bool = False, log_name: str | None = None):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return _call("reduce_scatter_tensor", input, lambda: fn(output, input, op=op, group=group, async_op=async_op), async_op,
                 group, prof, log_name)


def all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False,
                           prof: bool = False, log_name: str | None = None):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return _call("all_gather_into_tensor", output, lambda: fn(output, input, group=group, async_op=async_op), async_op,
                 group, prof, log_name)


def all_gather(tensor_list: list[torch.Tensor], tensor: torch.Tensor, group=None, async_op: bool = False,
               prof: bool = False, log_name: str | None = None):
    return _call("all_gather", tensor_list, lambda: dist.all_gather(tensor_list, tensor, group=group, async_op=async_op),
                 async_op, group, prof, log_name)


def all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group=None,
    async_op: bool = False,
    prof: bool = False,
    log_name: str | None = None,
):
    return _call(
        "all_to_all_single", input,
        lambda: dist.all_to_all_single(
            output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op
        ),
        async_op, group, prof, log_name,
    )


def send(tensor: torch.Tensor, dst: int, group=None, tag: int = 0, prof: bool = False, log_name: str | None = None):
    return _call("send", tensor, lambda: dist.send(tensor, dst, group=group, tag=tag), False, group, prof, log_name)


def recv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0, prof: bool = False,
         log_name: str | None = None):
    return _call("recv", tensor, lambda: dist.recv(tensor, src, group=group, tag=tag), False, group, prof, log_name)


def isend(tensor: torch.Tensor, dst: int, group=None, tag: int = 0, prof: bool = False, log_name: str | None = None):
    return _call("isend", tensor, lambda: dist.isend(tensor, dst, group=group, tag=tag), True, group, prof, log_name)


def irecv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0, prof: bool = False,
          log_name: str | None = None):
    return _call("irecv", tensor, lambda: dist.irecv(tensor, src, group=group, tag=tag), True, group, prof, log_name)


def barrier(group=None, async_op: bool = False, device_ids=None, prof: bool = False, log_name: str | None = None):
    return _call("barrier", None, lambda: dist.barrier(group=group, async_op=async_op, device_ids=device_ids), async_op,
                 group, prof, log_name)


def all_to_all(output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor], group=None, async_op: bool = False,
               prof: bool = False, log_name: str | None = None):
    return _call(
        "all_to_all", input_tensor_list,
        lambda: dist.all_to_all(output_tensor_list, input_tensor_list, group=group, async_op=async_op), async_op,
        group, prof, log_name,
    )


def all_gather_object(object_list: list, obj: Any, group=None):
    return _call("all_gather_object", None, lambda: dist.all_gather_object(object_list, obj, group=group), False, group)


def broadcast_object_list(object_list: list, src: int = 0, group=None):
    return _call("broadcast_object_list", None, lambda: dist.broadcast_object_list(object_list, src, group=group), False,
                 group)
