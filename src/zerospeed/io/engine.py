"""Asynchronous tensor reads and writes: a thread pool whose workers call os.preadv / os.pwritev.

The role of DeepSpeed's `aio_handle` (libaio) without a compile step or libaio: preadv and
pwritev release the GIL, so `threads` workers keep that many requests in the kernel while
Python computes. io_uring would save the thread hand-off, but no maintained pip package
wraps it (the `liburing` bindings on PyPI are unmaintained cffi shims), and on this
project's machines a thread pool already reaches the device's bandwidth (`zerospeed
io-bench`), so we stay with threads.

How the `aio` section maps here:
- `block_size`: bytes per iovec entry; a request is cut into blocks.
- `queue_depth`: blocks per system call (one preadv/pwritev with that many iovecs), so
  one submission moves `block_size * queue_depth` bytes; `single_submit` sends one block
  per call instead.
- `intra_op_parallelism` (old name `thread_count`): worker threads, i.e. system calls in
  flight at once.
- `overlap_events`: always true here (completion never blocks submission); accepted.
- `use_gds`: GPUDirect Storage has no meaning without a GPU; ignored with a note.
`ZEROSPEED_AIO_DIRECT=0` turns O_DIRECT off (buffered I/O + fdatasync + page drop).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from zerospeed.io.direct import ALIGNMENT, SwapFile, aligned_empty, is_aligned, probe, _view

MAX_IOVECS = 1024  # IOV_MAX on Linux


@dataclass(frozen=True)
class IOPolicy:
    """The `aio` section as the engine uses it (see the module docstring for the mapping)."""

    block_size: int = 1 << 20
    queue_depth: int = 8
    threads: int = 1
    single_submit: bool = False
    overlap_events: bool = True
    use_gds: bool = False
    direct: bool = True  # try O_DIRECT; the directory probe decides

    @classmethod
    def from_config(cls, aio) -> "IOPolicy":
        if aio is None:
            return cls()
        if aio.use_gds:
            from zerospeed.utils.logging import warn_once

            warn_once("aio.use_gds=true: GPUDirect Storage needs a CUDA device and cuFile; "
                      "zerospeed reads and writes through host memory instead")
        return cls(block_size=int(aio.block_size), queue_depth=int(aio.queue_depth),
                   threads=int(aio.intra_op_parallelism), single_submit=bool(aio.single_submit),
                   overlap_events=bool(aio.overlap_events), use_gds=bool(aio.use_gds),
                   direct=os.environ.get("ZEROSPEED_AIO_DIRECT", "1") != "0")

    @property
    def blocks_per_call(self) -> int:
        return 1 if self.single_submit else max(1, min(self.queue_depth, MAX_IOVECS))

    @property
    def submit_bytes(self) -> int:
        return self.block_size * self.blocks_per_call


class IOStats:
    """Bytes moved and the wall time during which at least one read / write was in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.bytes_written = 0
        self.read_seconds = 0.0
        self.write_seconds = 0.0
        self._in_flight = {"read": 0, "write": 0}
        self._since = {"read": 0.0, "write": 0.0}

    def begin(self, kind: str) -> None:
        with self._lock:
            if self._in_flight[kind] == 0:
                self._since[kind] = time.perf_counter()
            self._in_flight[kind] += 1

    def end(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self._in_flight[kind] -= 1
            if kind == "read":
                self.bytes_read += nbytes
            else:
                self.bytes_written += nbytes
            if self._in_flight[kind] == 0:
                elapsed = time.perf_counter() - self._since[kind]
                if kind == "read":
                    self.read_seconds += elapsed
                else:
                    self.write_seconds += elapsed

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"bytes_read": self.bytes_read, "bytes_written": self.bytes_written,
                    "read_seconds": self.read_seconds, "write_seconds": self.write_seconds}


class IORequest:
    """A read or write in flight; `wait()` returns the bytes moved or raises the first error."""

    def __init__(self, kind: str, file: SwapFile, tensor: torch.Tensor, nbytes: int, spans: int) -> None:
        self.kind = kind
        self.file = file
        self.tensor = tensor  # keeps the memory alive while workers use it
        self.nbytes = nbytes
        self.futures: list[Future] = []
        self._left = spans
        self._lock = threading.Lock()

    def last_span_done(self) -> bool:
        with self._lock:
            self._left -= 1
            return self._left == 0

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def wait(self) -> int:
        for future in self.futures:
            try:
                future.result()
            except OSError as error:
                raise OSError(error.errno, f"{self.kind} of {self.nbytes} bytes at {self.file.path} failed: "
                                           f"{error.strerror or error}") from error
        return self.nbytes


class AsyncIO:
    """Thread-pool async I/O over files; one per process is enough (requests are independent)."""

    def __init__(self, policy: IOPolicy | None = None) -> None:
        self.policy = policy or IOPolicy()
        self.stats = IOStats()
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.policy.threads), thread_name_prefix="zerospeed-aio")
        self._bounce = threading.local()
        self._buffered_spans: set[int] = set()  # files (by id) some request reached through the page cache

    # -- files --------------------------------------------------------------------------------
    def open(self, path: str) -> SwapFile:
        """Open (creating) `path`, with O_DIRECT where its directory takes it and the policy allows."""
        direct = self.policy.direct and probe(os.path.dirname(os.path.abspath(path)))
        return SwapFile.open(path, direct)

    # -- requests ---------------------------------------------------------------------------
    def write(self, tensor: torch.Tensor, file: SwapFile, offset: int = 0) -> IORequest:
        """Write `tensor`'s bytes to `file` at byte `offset` (asynchronous)."""
        return self._submit("write", tensor, file, offset)

    def read(self, tensor: torch.Tensor, file: SwapFile, offset: int = 0) -> IORequest:
        """Fill `tensor` from `file` at byte `offset` (asynchronous)."""
        return self._submit("read", tensor, file, offset)

    def _submit(self, kind: str, tensor: torch.Tensor, file: SwapFile, offset: int) -> IORequest:
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise ValueError(f"async I/O needs a contiguous CPU tensor, got {tensor.device} "
                             f"{'contiguous' if tensor.is_contiguous() else 'non-contiguous'}")
        nbytes = tensor.numel() * tensor.element_size()
        step = self.policy.submit_bytes
        starts = list(range(0, nbytes, step)) or [0]
        request = IORequest(kind, file, tensor, nbytes, len(starts))
        self.stats.begin(kind)
        for start in starts:
            length = min(step, nbytes - start)
            request.futures.append(self._pool.submit(self._span, request, start, length, offset + start))
        return request

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- worker side ------------------------------------------------------------------------------
    def _span(self, request: IORequest, start: int, length: int, offset: int) -> None:
        try:
            if length:
                self._move(request.kind, request.file, request.tensor, start, length, offset)
        finally:
            if request.last_span_done():
                try:
                    self._settle(request, offset - start)
                finally:
                    self.stats.end(request.kind, request.nbytes)

    def _move(self, kind: str, file: SwapFile, tensor: torch.Tensor, start: int, length: int, offset: int) -> None:
        address = tensor.data_ptr() + start
        if not (file.direct and is_aligned(address) and is_aligned(offset)):
            self._buffered_spans.add(id(file))
            self._transfer(kind, file.buffered_fd, file.path, tensor, start, length, offset)
            return
        body = length - length % ALIGNMENT
        if body:
            self._transfer(kind, file.fd, file.path, tensor, start, body, offset)
        tail = length - body
        if tail:  # direct I/O moves whole blocks: the last partial one goes through an aligned block
            bounce = self._bounce_block()
            flat = tensor.reshape(-1).view(torch.uint8)
            if kind == "write":
                bounce.zero_()
                bounce[:tail].copy_(flat[start + body : start + length])
                _all(os.pwritev, file.fd, [_view(bounce, 0, ALIGNMENT)], offset + body, ALIGNMENT, file.path)
            else:
                _all(os.preadv, file.fd, [_view(bounce, 0, ALIGNMENT)], offset + body, tail, file.path)
                flat[start + body : start + length].copy_(bounce[:tail])

    def _transfer(self, kind: str, fd: int, path: str, tensor: torch.Tensor, start: int, length: int,
                  offset: int) -> None:
        block = self.policy.block_size
        views = [_view(tensor, start + at, min(block, length - at)) for at in range(0, length, block)]
        call = os.pwritev if kind == "write" else os.preadv
        _all(call, fd, views, offset, length, path)

    def _settle(self, request: IORequest, offset: int) -> None:
        """Buffered files: make written pages clean and drop them (and read ones), so the page
        cache does not keep a second copy of what was just swapped out."""
        if request.file.direct and id(request.file) not in self._buffered_spans:
            return
        fd = request.file.buffered_fd
        if request.kind == "write":
            os.fdatasync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, request.nbytes, os.POSIX_FADV_DONTNEED)

    def _bounce_block(self) -> torch.Tensor:
        block = getattr(self._bounce, "block", None)
        if block is None:
            block = self._bounce.block = aligned_empty(ALIGNMENT)
        return block


def _all(call, fd: int, views: list, offset: int, length: int, path: str) -> None:
    """Repeat a vectored call until `length` bytes moved (short transfers happen). A read that
    hits the end of the file first is an error: swap files are always written before read."""
    done, current = 0, views
    while done < length:
        moved = call(fd, current, offset + done)
        if moved == 0:
            raise OSError(errno.EIO, f"unexpected end of file {path} after {done} of {length} bytes at offset {offset}")
        done += moved
        if done < length:
            current = _advance(views, done)


def _advance(views: list, skip: int) -> list:
    """The part of `views` after the first `skip` bytes."""
    out = []
    for view in views:
        size = len(view)
        if skip >= size:
            skip -= size
            continue
        out.append(memoryview(view).cast("B")[skip:])
        skip = 0
    return out
