"""Point-to-point transfer of activations and gradients between neighbouring stages.

Sends are asynchronous (`isend`, completed at the end of the schedule), receives block:
with the 1F1B order of pipe/schedule.py that rule cannot deadlock on gloo, whose
blocking `send` may wait for the peer's matching receive.

Activations travel with a small header (tensor count, dtypes, shapes, requires_grad),
so a tuple of tensors of mixed dtypes, with some tensors that need no gradient, needs no
configuration. The first transfer negotiates the layout; later ones post the header and
data receives together and check the header: a changed shape raises `PipelineError`
naming both shapes on both ranks (leaving no message in flight, so the job can go on
after `engine.reset_activation_shape()`); a module built with `dynamic_shape=True`
renegotiates at every transfer instead.
Gradients need no header: the receiving stage knows the shapes of its own outputs.
"""

from __future__ import annotations

import torch

from zerospeed import comm
from zerospeed.errors import EngineError

HEADER_SIZE = 64
_HEADER_TAG, _DATA_TAG = 1, 0
_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool,
]


class PipelineError(EngineError):
    """A pipeline was used in a way that cannot work (DeepSpeed's PipelineError)."""


Layout = tuple  # ((dtype, requires_grad, shape), ...) plus whether it was a bare tensor


def layout_of(value) -> tuple[bool, tuple]:
    """(was a single tensor, per-tensor (dtype, requires_grad, shape)) of a stage's output."""
    single = isinstance(value, torch.Tensor)
    tensors = (value,) if single else value
    if not isinstance(tensors, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise PipelineError(
            f"a stage must output a tensor or a tuple of tensors to send to the next stage, got {_kind(value)}"
        )
    return single, tuple((t.dtype, bool(t.requires_grad), tuple(t.shape)) for t in tensors)


def describe(layout: tuple) -> str:
    single, entries = layout
    parts = [f"{tuple(shape)} {str(dtype).replace('torch.', '')}{' (grad)' if grad else ''}" for dtype, grad, shape in entries]
    return parts[0] if single else "(" + ", ".join(parts) + ")"


def encode(layout: tuple) -> torch.Tensor:
    single, entries = layout
    values = [1 if single else 2, len(entries)]
    for dtype, grad, shape in entries:
        values += [_DTYPES.index(dtype), int(grad), len(shape), *shape]
    if len(values) > HEADER_SIZE:
        raise PipelineError(f"activation layout {describe(layout)} needs {len(values)} header slots; at most {HEADER_SIZE}")
    header = torch.zeros(HEADER_SIZE, dtype=torch.int64)
    header[: len(values)] = torch.tensor(values, dtype=torch.int64)
    return header


def decode(header: torch.Tensor) -> tuple:
    values = header.tolist()
    single, count, at, entries = values[0] == 1, values[1], 2, []
    for _ in range(count):
        dtype, grad, ndim = _DTYPES[values[at]], bool(values[at + 1]), values[at + 2]
        entries.append((dtype, grad, tuple(values[at + 3 : at + 3 + ndim])))
        at += 3 + ndim
    return single, tuple(entries)


def _kind(value) -> str:
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    return tensor.contiguous()


class P2P:
    """This stage's transfers to its previous and next stages (global ranks `prev`, `next`)."""

    def __init__(self, prev_rank: int | None, next_rank: int | None, device, dynamic_shape: bool = False) -> None:
        self.prev_rank, self.next_rank = prev_rank, next_rank
        self.device = device
        self.dynamic_shape = dynamic_shape
        self._pending: list[tuple[object, torch.Tensor]] = []
        self.reset()

    def reset(self) -> None:
        """Forget negotiated layouts (DeepSpeed's `reset_activation_shape`)."""
        self.sent_layout: tuple | None = None
        self.recv_layout: tuple | None = None

    # -- activations ------------------------------------------------------------------
    def send_activation(self, value) -> None:
        layout = layout_of(value)
        changed = self.sent_layout is not None and layout != self.sent_layout
        self._isend(encode(layout), self.next_rank, _HEADER_TAG)
        if changed and not self.dynamic_shape:
            # The receiver has posted receives of the old layout: fill them, so that both
            # ranks raise and no stray message is left to match a later receive.
            for tensor in self._empty(self.sent_layout):
                self._isend(tensor.zero_(), self.next_rank, _DATA_TAG)
            raise PipelineError(
                f"stage output changed from {describe(self.sent_layout)} to {describe(layout)} after the first "
                "micro-batch; build PipelineModule(dynamic_shape=True) or call engine.reset_activation_shape() "
                "to renegotiate shapes"
            )
        self.sent_layout = layout
        tensors = (value,) if layout[0] else tuple(value)
        for tensor in tensors:
            self._isend(_wire(tensor), self.next_rank, _DATA_TAG)

    def recv_activation(self):
        """The previous stage's outputs as fresh leaf tensors (requiring grad as they did there)."""
        header = torch.empty(HEADER_SIZE, dtype=torch.int64)
        if self.recv_layout is None or self.dynamic_shape:
            comm.recv(header, self.prev_rank, tag=_HEADER_TAG)
            self.recv_layout = decode(header)
            buffers = self._empty(self.recv_layout)
            works = [comm.irecv(b, self.prev_rank, tag=_DATA_TAG) for b in buffers]
        else:
            header_work = comm.irecv(header, self.prev_rank, tag=_HEADER_TAG)
            buffers = self._empty(self.recv_layout)
            works = [comm.irecv(b, self.prev_rank, tag=_DATA_TAG) for b in buffers]
            header_work.wait()
            received = decode(header)
            if received != self.recv_layout:
                for work in works:  # the sender fills them with zeros before it raises too
                    work.wait()
                raise PipelineError(
                    f"the previous stage's output changed from {describe(self.recv_layout)} to {describe(received)} "
                    "after the first micro-batch; build PipelineModule(dynamic_shape=True) or call "
                    "engine.reset_activation_shape() to renegotiate shapes"
                )
        for work in works:
            work.wait()
        single, entries = self.recv_layout
        tensors = []
        for buffer, (dtype, grad, _) in zip(buffers, entries):
            tensor = buffer.to(torch.bool) if dtype == torch.bool else buffer
            tensor.requires_grad_(grad and tensor.is_floating_point() and torch.is_grad_enabled())
            tensors.append(tensor)
        return tensors[0] if single else tuple(tensors)

    def _empty(self, layout: tuple) -> list[torch.Tensor]:
        return [
            torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=self.device)
            for dtype, _, shape in layout[1]
        ]

    # -- gradients ----------------------------------------------------------------------
    def send_grads(self, grads: list[torch.Tensor]) -> None:
        for grad in grads:
            self._isend(grad.detach().contiguous(), self.prev_rank, _DATA_TAG)

    def recv_grads(self, like: list[torch.Tensor]) -> list[torch.Tensor]:
        buffers = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
        works = [comm.irecv(b, self.next_rank, tag=_DATA_TAG) for b in buffers]
        for work in works:
            work.wait()
        return buffers

    # -- completion -----------------------------------------------------------------------
    def _isend(self, tensor: torch.Tensor, dst: int, tag: int) -> None:
        self._pending.append((comm.isend(tensor, dst, tag=tag), tensor))
        if len(self._pending) > 64:  # keep the list short on long schedules
            self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]

    def wait_all(self) -> None:
        """Complete every outstanding send (end of a schedule; the tensors may then be freed)."""
        for work, _ in self._pending:
            work.wait()
        self._pending.clear()
