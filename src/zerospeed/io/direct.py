"""Direct I/O support: aligned host buffers, the O_DIRECT probe of a directory, swap files.

O_DIRECT moves data between the device and our buffer without the page cache, so a
swapped-out partition does not come back as cached pages that count against the
process's memory. It needs the buffer address, the file offset and the length aligned
to the device's logical block size; `ALIGNMENT` (4 KiB) covers every common device.
Some file systems refuse O_DIRECT (older tmpfs, some FUSE and network mounts): `probe`
tries it once per directory and the engine falls back to buffered I/O, where a written
file is flushed (fdatasync) and its pages dropped (posix_fadvise DONTNEED) instead.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from dataclasses import dataclass, field

import torch

ALIGNMENT = 4096
_HAS_DIRECT = hasattr(os, "O_DIRECT")
_probed: dict[str, bool] = {}
_probe_lock = threading.Lock()


def round_up(value: int, multiple: int = ALIGNMENT) -> int:
    return -(-value // multiple) * multiple


def aligned_empty(numel: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """An uninitialised CPU tensor whose first byte is ALIGNMENT-aligned and whose storage
    extends to a whole number of ALIGNMENT blocks past it (so a direct write may cover the tail)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = round_up(max(numel * itemsize, 1))
    raw = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8)
    skip = (-raw.data_ptr()) % ALIGNMENT
    return raw[skip : skip + nbytes].view(dtype)[:numel]


def is_aligned(value: int) -> bool:
    return value % ALIGNMENT == 0


def probe(directory: str) -> bool:
    """Whether files in `directory` accept O_DIRECT reads and writes (cached per directory)."""
    directory = os.path.realpath(directory)
    with _probe_lock:
        if directory in _probed:
            return _probed[directory]
        _probed[directory] = _try_direct(directory)
        return _probed[directory]


def _try_direct(directory: str) -> bool:
    if not _HAS_DIRECT:
        return False
    path = os.path.join(directory, f".zerospeed-odirect-probe-{uuid.uuid4().hex}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    try:
        block = aligned_empty(ALIGNMENT)
        block.fill_(7)
        os.pwritev(fd, [_view(block, 0, ALIGNMENT)], 0)
        back = aligned_empty(ALIGNMENT)
        return os.preadv(fd, [_view(back, 0, ALIGNMENT)], 0) == ALIGNMENT and bool(torch.equal(block, back))
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    finally:
        os.close(fd)
        os.unlink(path)


def _view(tensor: torch.Tensor, start: int, length: int):
    """A writable bytes-like view of `length` bytes of `tensor`'s memory from byte `start`."""
    import ctypes

    return (ctypes.c_char * length).from_address(tensor.data_ptr() + start)


@dataclass
class SwapFile:
    """One open file and how it is accessed: O_DIRECT (`direct`) or buffered."""

    path: str
    fd: int
    direct: bool
    _buffered_fd: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, path: str, direct: bool) -> "SwapFile":
        flags = os.O_RDWR | os.O_CREAT
        if direct:
            try:
                return cls(path, os.open(path, flags | os.O_DIRECT, 0o600), True)
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                    raise
        return cls(path, os.open(path, flags, 0o600), False)

    @property
    def buffered_fd(self) -> int:
        """A second, buffered descriptor for requests direct I/O cannot express (misaligned)."""
        if not self.direct:
            return self.fd
        with self._lock:
            if self._buffered_fd is None:
                self._buffered_fd = os.open(self.path, os.O_RDWR)
            return self._buffered_fd

    def close(self) -> None:
        for fd in (self.fd, self._buffered_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._buffered_fd = None
        self.fd = -1
