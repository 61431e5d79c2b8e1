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
import sys
import time
from collections import defaultdict
from typing import Any, Callable

import torch
import torch.distributed as dist

from zerospeed.errors import CommError

ReduceOp = dist.ReduceOp


class CommLog:
    """Counts calls, bytes and wall time per op; the comms_logger summary reads this."""

    def __init__(self) -> None:
        self.enabled = True
        self.verbose = False
        self.reset()

    def reset(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def record(self, op: str, nbytes: int, seconds: float) -> None:
        self.calls[op] += 1
        self.bytes[op] += nbytes
        self.seconds[op] += seconds

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            op: {"calls": self.calls[op], "bytes": self.bytes[op], "seconds": self.seconds[op]}
            for op in sorted(self.calls)
        }

    def format_table(self) -> str:
        """The summary as an aligned text table, one row per op plus a total."""
        header = ("op", "calls", "bytes", "MiB", "seconds", "GB/s")
        rows = []
        for op, entry in self.summary().items():
            rows.append(_table_row(op, entry["calls"], entry["bytes"], entry["seconds"]))
        rows.append(_table_row("total", sum(self.calls.values()), self.total_bytes(), sum(self.seconds.values())))
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 for row in (header, *rows)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _table_row(op: str, calls: int, nbytes: int, seconds: float) -> tuple[str, ...]:
    rate = nbytes / seconds / 1e9 if seconds > 0 else 0.0
    return (op, str(calls), str(nbytes), f"{nbytes / 2**20:.2f}", f"{seconds:.4f}", f"{rate:.3f}")


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

    Calls, bytes and issue time are logged when the op is issued; the seconds until
    `wait()` returns are added when it does.
    """

    def __init__(self, work: Any, op: str, what: str, nbytes: int, started: float) -> None:
        self._work, self._op, self._what = work, op, what
        self._started, self._timed = started, False

    def wait(self, timeout: datetime.timedelta | None = None) -> bool:
        try:
            done = self._work.wait() if timeout is None else self._work.wait(timeout)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise _comm_error(self._op, self._what, error) from error
        if comm_log.enabled and not self._timed:
            comm_log.seconds[self._op] += time.perf_counter() - self._started
            self._timed = True
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


def _call(op: str, tensor: Any, fn: Callable[[], Any], async_op: bool) -> Any:
    if not dist.is_initialized():
        raise CommError(f"{op} called before init_distributed(); call zerospeed.init_distributed() first")
    what = _describe(tensor)
    start = time.perf_counter()
    try:
        work = fn()
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise _comm_error(op, what, error) from error
    nbytes = _nbytes(tensor)
    if comm_log.enabled:
        comm_log.record(op, nbytes, 0.0 if async_op else time.perf_counter() - start)
    if async_op:
        return _CheckedWork(work, op, what, nbytes, start)
    return None


def all_reduce(tensor: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    return _call("all_reduce", tensor, lambda: dist.all_reduce(tensor, op=op, group=group, async_op=async_op), async_op)


def reduce(tensor: torch.Tensor, dst: int, op=ReduceOp.SUM, group=None, async_op: bool = False):
    return _call("reduce", tensor, lambda: dist.reduce(tensor, dst, op=op, group=group, async_op=async_op), async_op)


def broadcast(tensor: torch.Tensor, src: int, group=None, async_op: bool = False):
    return _call("broadcast", tensor, lambda: dist.broadcast(tensor, src, group=group, async_op=async_op), async_op)


def reduce_scatter_tensor(output: torch.Tensor, input: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return _call("reduce_scatter_tensor", input, lambda: fn(output, input, op=op, group=group, async_op=async_op), async_op)


def all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return _call("all_gather_into_tensor", output, lambda: fn(output, input, group=group, async_op=async_op), async_op)


def all_gather(tensor_list: list[torch.Tensor], tensor: torch.Tensor, group=None, async_op: bool = False):
    return _call("all_gather", tensor_list, lambda: dist.all_gather(tensor_list, tensor, group=group, async_op=async_op), async_op)


def all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group=None,
    async_op: bool = False,
):
    return _call(
        "all_to_all_single", input,
        lambda: dist.all_to_all_single(
            output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op
        ),
        async_op,
    )


def send(tensor: torch.Tensor, dst: int, group=None, tag: int = 0):
    return _call("send", tensor, lambda: dist.send(tensor, dst, group=group, tag=tag), False)


def recv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0):
    return _call("recv", tensor, lambda: dist.recv(tensor, src, group=group, tag=tag), False)


def isend(tensor: torch.Tensor, dst: int, group=None, tag: int = 0):
    return _call("isend", tensor, lambda: dist.isend(tensor, dst, group=group, tag=tag), True)


def irecv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0):
    return _call("irecv", tensor, lambda: dist.irecv(tensor, src, group=group, tag=tag), True)


def barrier(group=None, async_op: bool = False, device_ids=None):
    return _call("barrier", None, lambda: dist.barrier(group=group, async_op=async_op, device_ids=device_ids), async_op)


def all_to_all(output_tensor_list: list[torch.Tensor], input_tensor_list: list[torch.Tensor], group=None, async_op: bool = False):
    return _call(
        "all_to_all", input_tensor_list,
        lambda: dist.all_to_all(output_tensor_list, input_tensor_list, group=group, async_op=async_op), async_op,
    )


def all_gather_object(object_list: list, obj: Any, group=None):
    return _call("all_gather_object", None, lambda: dist.all_gather_object(object_list, obj, group=group), False)


def broadcast_object_list(object_list: list, src: int = 0, group=None):
    return _call("broadcast_object_list", None, lambda: dist.broadcast_object_list(object_list, src, group=group), False)
