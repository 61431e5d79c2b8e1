"""Collectives over torch.distributed with byte counting and errors that name rank and op.

Every collective the runtime issues goes through `_call`, which (a) records the op and
its payload in the comm log, and (b) turns a backend timeout or failure into a
`CommError` naming this rank, the op and the tensor, instead of a trace from inside gloo
or NCCL. Timeouts themselves come from the process group (`init_distributed(timeout=)`).
"""

from __future__ import annotations

import datetime
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


comm_log = CommLog()
_timeout = datetime.timedelta(minutes=30)


def set_default_timeout(timeout: datetime.timedelta) -> None:
    global _timeout
    _timeout = timeout


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
    """Wraps an async handle so `wait()` failures also name the op and rank."""

    def __init__(self, work: Any, op: str, what: str) -> None:
        self._work, self._op, self._what = work, op, what

    def wait(self, timeout: datetime.timedelta | None = None) -> bool:
        try:
            return self._work.wait() if timeout is None else self._work.wait(timeout)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise _comm_error(self._op, self._what, error) from error

    def is_completed(self) -> bool:
        return self._work.is_completed()


def _comm_error(op: str, what: str, error: BaseException) -> CommError:
    rank = dist.get_rank() if dist.is_initialized() else -1
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    kind = "timed out" if "timeout" in str(error).lower() or "timed out" in str(error).lower() else "failed"
    return CommError(
        f"rank {rank}: {op} on {what} {kind} (process-group timeout {_timeout.total_seconds():.0f}s). "
        f"A rank that never reaches the same collective (a mismatched call, an exception, an "
        f"uneven number of batches) causes this. Backend said: {text}"
    )


def _call(op: str, tensor: Any, fn: Callable[[], Any], async_op: bool) -> Any:
    if not dist.is_initialized():
        raise CommError(f"{op} called before init_distributed(); call zerospeed.init_distributed() first")
    what = _describe(tensor)
    start = time.perf_counter()
    try:
        work = fn()
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise _comm_error(op, what, error) from error
    if comm_log.enabled:
        comm_log.record(op, _nbytes(tensor), time.perf_counter() - start)
    if async_op:
        return _CheckedWork(work, op, what)
    return None


def all_reduce(tensor: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    return _call("all_reduce", tensor, lambda: dist.all_reduce(tensor, op=op, group=group, async_op=async_op), async_op)


def reduce(tensor: torch.Tensor, dst: int, op=ReduceOp.SUM, group=None, async_op: bool = False):
    return _call("reduce", tensor, lambda: dist.reduce(tensor, dst, op=op, group=group, async_op=async_op), async_op)


def broadcast(tensor: torch.Tensor, src: int, group=None, async_op: bool = False):
    return _call("broadcast", tensor, lambda: dist.broadcast(tensor, src, group=group, async_op=async_op), async_op)


def reduce_scatter_tensor(output: torch.Tensor, input: torch.Tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return _call("reduce_scatter", input, lambda: fn(output, input, op=op, group=group, async_op=async_op), async_op)


def all_gather_into_tensor(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False):
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return _call("all_gather", output, lambda: fn(output, input, group=group, async_op=async_op), async_op)


def all_gather(tensor_list: list[torch.Tensor], tensor: torch.Tensor, group=None, async_op: bool = False):
    return _call("all_gather", tensor_list, lambda: dist.all_gather(tensor_list, tensor, group=group, async_op=async_op), async_op)


def all_to_all_single(output: torch.Tensor, input: torch.Tensor, group=None, async_op: bool = False):
    return _call("all_to_all", input, lambda: dist.all_to_all_single(output, input, group=group, async_op=async_op), async_op)


def send(tensor: torch.Tensor, dst: int, group=None, tag: int = 0):
    return _call("send", tensor, lambda: dist.send(tensor, dst, group=group, tag=tag), False)


def recv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0):
    return _call("recv", tensor, lambda: dist.recv(tensor, src, group=group, tag=tag), False)


def isend(tensor: torch.Tensor, dst: int, group=None, tag: int = 0):
    return _call("send", tensor, lambda: dist.isend(tensor, dst, group=group, tag=tag), True)


def irecv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0):
    return _call("recv", tensor, lambda: dist.irecv(tensor, src, group=group, tag=tag), True)


def barrier(group=None):
    return _call("barrier", None, lambda: dist.barrier(group=group), False)


def all_gather_object(object_list: list, obj: Any, group=None):
    return _call("all_gather_object", None, lambda: dist.all_gather_object(object_list, obj, group=group), False)


def broadcast_object_list(object_list: list, src: int = 0, group=None):
    return _call("broadcast_object_list", None, lambda: dist.broadcast_object_list(object_list, src, group=group), False)
