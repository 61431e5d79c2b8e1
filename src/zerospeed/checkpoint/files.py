"""Durable file primitives: streamed safetensors writing with a running CRC32, fsync, atomic replace,
and memory-mapped safetensors reading.

A checkpoint file is written once, front to back, and its CRC32 is computed from the same
bytes as they go out, so verifying later costs one pass over the file and writing costs no
extra one. Tensors are written in the safetensors format (header JSON, then raw
little-endian bytes), so any safetensors reader can open our files; the header is built
first from shapes and dtypes alone, which lets the consolidator stream a model larger than
memory. Reading maps the file (`SafetensorsReader`): a tensor is a view of the page cache,
so a loader copies each saved range once, straight into its destination, and allocates
nothing (fresh allocations cost page faults that are dearer than the copy itself).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from zerospeed.errors import CheckpointError

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
SAFETENSORS_TORCH_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
HEADER_LIMIT = 100 * 2**20  # a larger header is a corrupted length field, not a real header
WRITEBACK_CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class FileInfo:
    """What the manifest records of each file: its size and CRC32."""

    bytes: int
    crc32: int

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "crc32": f"{self.crc32:08x}"}


def _writeback_starter() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE), or None where absent."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return lambda fd, offset, length: function(fd, offset, length, 2)


_start_writeback = _writeback_starter()


class _DurableFile:
    """A file written front to back and fsynced on close. Each chunk is handed to the disk as soon
    as it is written (sync_file_range: start write-back, do not wait), so the disk works while the
    rest is still being copied and the closing fsync waits for little more than the last chunk."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        self.size = 0
        self._handed_over = 0

    def write(self, view: memoryview) -> None:
        for start in range(0, view.nbytes, WRITEBACK_CHUNK_BYTES):
            chunk = view[start : start + WRITEBACK_CHUNK_BYTES]
            written = 0
            while written < chunk.nbytes:
                written += os.write(self.fd, chunk[written:])
            self.size += chunk.nbytes
            if _start_writeback is not None and self.size - self._handed_over >= WRITEBACK_CHUNK_BYTES:
                _start_writeback(self.fd, self._handed_over, self.size - self._handed_over)
                self._handed_over = self.size

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abandon(self) -> None:
        """Close without fsync after a failed write (a no-op once closed)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class _ChecksumWriter:
    """A binary file that keeps a CRC32 and byte count of everything written."""

    def __init__(self, path: str) -> None:
        self.file = _DurableFile(path)
        self.crc = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.crc = zlib.crc32(view, self.crc)

    def close(self) -> FileInfo:
        self.file.close()
        return FileInfo(self.file.size, self.crc)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy when it is a contiguous CPU tensor.

    Not through `.numpy()`: that marks the storage non-resizable for good, and stage 3's
    gather buffers (and any tensor sharing their storage) are freed by resizing them.
    """
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    nbytes = flat.numel() * flat.element_size()
    if nbytes == 0:
        return memoryview(b"")
    raw = (ctypes.c_ubyte * nbytes).from_address(flat.data_ptr())
    raw._owner = flat  # the memoryview keeps `raw` alive, `raw` keeps the tensor alive
    return memoryview(raw).cast("B")


def safetensors_header(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None) -> bytes:
    """The header for tensors `(name, dtype, shape)` laid out in order, padded to 8 bytes."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor '{name}' has dtype {dtype}, which a checkpoint cannot store; "
                                  f"allowed: {', '.join(str(d) for d in SAFETENSORS_DTYPES)}")
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_safetensors(
    path: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> FileInfo:
    """Write `tensors` as safetensors; fsync; return size + CRC.

    CPU tensors (a checkpoint's usual case) are written and synced by a second thread while
    this one computes the CRC32 over the same bytes (both release the GIL), so the checksum
    costs no time of its own. Tensors on an accelerator are copied to CPU one at a time.
    """
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()]
    if any(t.device.type != "cpu" for t in tensors.values()):
        return write_safetensors_stream(path, specs, lambda name: tensors[name], metadata)
    views = [memoryview(safetensors_header(specs, metadata))] + [_tensor_bytes(t) for t in tensors.values()]
    return _write_views(path, views)


def _write_views(path: str, views: list[memoryview]) -> FileInfo:
    """Write `views` to `path` and fsync it in a thread while the CRC32 of the same bytes is computed here."""
    failed: list[BaseException] = []
    file = _DurableFile(path)

    def write_and_sync() -> None:
        try:
            for view in views:
                file.write(view)
            file.close()
        except BaseException as error:  # noqa: BLE001 - re-raised below
            failed.append(error)
            file.abandon()

    writer = threading.Thread(target=write_and_sync, name="zerospeed-ckpt-write", daemon=True)
    writer.start()
    crc = 0
    for view in views:
        crc = zlib.crc32(view, crc)
    writer.join()
    if failed:
        raise failed[0]
    return FileInfo(file.size, crc)


def write_safetensors_stream(
    path: str,
    specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> FileInfo:
    """Write tensors described by `specs`, asking `produce(name)` for each only when it is written.

    Peak memory is one tensor, whatever the file size.
    """
    writer = _ChecksumWriter(path)
    try:
        writer.write(safetensors_header(specs, metadata))
        for name, dtype, shape in specs:
            tensor = produce(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise CheckpointError(f"{path}: tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, "
                                      f"announced as {dtype} {tuple(shape)}")
            data = _tensor_bytes(tensor)
            writer.write(data)
            if progress is not None:
                progress(data.nbytes)
    except BaseException:
        writer.file.abandon()
        raise
    return writer.close()


def write_bytes(path: str, data: bytes) -> FileInfo:
    writer = _ChecksumWriter(path)
    writer.write(data)
    return writer.close()


def _map(path: str) -> mmap.mmap | None:
    """A private copy-on-write mapping of the whole file (None for an empty file): tensors made
    from it are writable without touching the file, and nothing is copied unless written."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None


def file_info(path: str) -> FileInfo:
    """Size and CRC32 of a file, computed over a mapping of it (no copy into Python buffers)."""
    mapping = _map(path)
    if mapping is None:
        return FileInfo(0, 0)
    try:
        return FileInfo(len(mapping), zlib.crc32(mapping))
    finally:
        mapping.close()


def verify_file(path: str, expected: dict) -> None:
    """Raise CheckpointError naming `path` unless its size and CRC32 match the manifest's record."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path} is missing (listed in the manifest)")
    size = os.path.getsize(path)
    if size != expected["bytes"]:
        raise CheckpointError(f"checkpoint file {path} is {size} bytes, the manifest says {expected['bytes']}: "
                              "the file is truncated or was replaced")
    actual = f"{file_info(path).crc32:08x}"
    if actual != expected["crc32"]:
        raise CheckpointError(f"checkpoint file {path} is corrupted: CRC32 {actual}, the manifest says {expected['crc32']}")


class SafetensorsReader:
    """A safetensors file, memory-mapped: `tensor(name)` is a view of the mapping, not a copy.

    A view holds a reference to the mapping, so it stays valid after `close()`; the file is
    unmapped when the reader and its last view are gone.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._map = _map(path)
        size = 0 if self._map is None else len(self._map)
        if size < 8:
            raise CheckpointError(f"checkpoint file {path} is not a safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", self._map[:8])
        if header_len > min(HEADER_LIMIT, size - 8):
            raise CheckpointError(f"checkpoint file {path} has a corrupted safetensors header (length {header_len})")
        try:
            header = json.loads(bytes(self._map[8 : 8 + header_len]))
        except ValueError as error:
            raise CheckpointError(f"checkpoint file {path} has a corrupted safetensors header: {error}") from error
        self._metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._data_start = 8 + header_len
        self._size = size

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keys(self) -> list[str]:
        return list(self._entries)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name` as a view of the file (write into it and only this process's copy changes)."""
        entry = self._entries.get(name)
        if entry is None:
            raise CheckpointError(f"checkpoint file {self.path} has no tensor '{name}'")
        dtype = SAFETENSORS_TORCH_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"checkpoint file {self.path}: tensor '{name}' has dtype {entry['dtype']}, "
                                  f"which zerospeed does not read")
        shape = tuple(entry["shape"])
        begin, end = (self._data_start + offset for offset in entry["data_offsets"])
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = torch.Size(shape).numel()
        if end > self._size or end - begin != count * itemsize:
            raise CheckpointError(f"checkpoint file {self.path}: tensor '{name}' lies outside the file or "
                                  f"does not match its shape {shape} (the file is corrupted)")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        if begin % itemsize:  # misaligned (after an odd-sized tensor): copy rather than view
            return torch.frombuffer(bytearray(self._map[begin:end]), dtype=dtype).view(shape)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=begin).view(shape)

    def crc32(self) -> int:
        return zlib.crc32(self._map)

    def verify(self, expected: dict) -> None:
        """Raise CheckpointError unless the mapped file's size and CRC32 match the manifest's record."""
        if self._size != expected["bytes"]:
            raise CheckpointError(f"checkpoint file {self.path} is {self._size} bytes, the manifest says "
                                  f"{expected['bytes']}: the file is truncated or was replaced")
        actual = f"{self.crc32():08x}"
        if actual != expected["crc32"]:
            raise CheckpointError(f"checkpoint file {self.path} is corrupted: CRC32 {actual}, "
                                  f"the manifest says {expected['crc32']}")

    def close(self) -> None:
        """Drop the reader's hold on the mapping. It is unmapped when the last view of it is gone
        (each view holds a reference; an explicit munmap would leave live views dangling)."""
        self._map = None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix."""
    temp = f"{path}.tmp-{os.getpid()}"
    write_bytes(temp, text.encode())
    os.replace(temp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
