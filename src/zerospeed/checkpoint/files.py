"""Durable file primitives: streamed safetensors writing with a running CRC32, fsync, atomic replace.

A checkpoint file is written once, front to back, and its CRC32 is computed from the same
bytes as they go out, so verifying later costs one read and writing costs no extra pass.
Tensors are written in the safetensors format (header JSON, then raw little-endian bytes),
so any safetensors reader can open our files; the header is built first from shapes
and dtypes alone, which lets the consolidator stream a model larger than memory.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
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
CHUNK_BYTES = 16 * 2**20


@dataclass(frozen=True)
class FileInfo:
    """What the manifest records of each file: its size and CRC32."""

    bytes: int
    crc32: int

    def to_json(self) -> dict:
        return {"bytes": self.bytes, "crc32": f"{self.crc32:08x}"}


class _ChecksumWriter:
    """A binary file that keeps a CRC32 and byte count of everything written."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.crc = 0
        self.size = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.crc = zlib.crc32(view, self.crc)
        self.size += view.nbytes

    def close(self) -> FileInfo:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return FileInfo(self.size, self.crc)


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
    """Write `tensors` (any device; copied to CPU one at a time) as safetensors; fsync; return size + CRC."""
    return write_safetensors_stream(
        path, [(name, t.dtype, tuple(t.shape)) for name, t in tensors.items()], lambda name: tensors[name], metadata
    )


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
        writer.file.close()
        raise
    return writer.close()


def write_bytes(path: str, data: bytes) -> FileInfo:
    writer = _ChecksumWriter(path)
    writer.write(data)
    return writer.close()


def file_info(path: str) -> FileInfo:
    """Size and CRC32 of a file, read in chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return FileInfo(size, crc)


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
