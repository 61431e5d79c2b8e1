"""Byte-level text corpus and (x, y) window dataset for the GPT example.

The default corpus exists on every machine: the Python standard library's own `.py` sources
(files sorted by path, capped at `max_bytes`), cached as a uint8 tensor file so later runs
start at once. `--data PATH` reads a user's text file, or every file under a directory
(sorted by path, files that look binary skipped). The vocabulary is the 256 byte values.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import torch
from torch.utils.data import Dataset

VOCAB_SIZE = 256
DEFAULT_MAX_BYTES = 8 * 2**20
DEFAULT_CACHE_DIR = Path(os.environ.get("ZEROSPEED_CACHE", Path.home() / ".cache" / "zerospeed"))
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_sources() -> list[Path]:
    """The standard library's `.py` files, sorted by path relative to the stdlib root."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
        files.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _user_sources(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    raise FileNotFoundError(f"--data {path}: no such file or directory")


def _looks_binary(blob: bytes) -> bool:
    return b"\x00" in blob[:4096]


def _concat(files: list[Path], max_bytes: int, show_progress: bool) -> bytes:
    chunks, total = [], 0
    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=max_bytes, unit="B", unit_scale=True, desc="reading corpus", leave=False)
    for f in files:
        try:
            blob = f.read_bytes()
        except OSError:
            continue
        if not blob or _looks_binary(blob):
            continue
        blob = blob[: max_bytes - total]
        chunks.append(blob)
        total += len(blob)
        if bar is not None:
            bar.update(len(blob))
        if total >= max_bytes:
            break
    if bar is not None:
        bar.close()
    return b"".join(chunks)


def load_corpus(data: str | os.PathLike | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
                cache_dir: str | os.PathLike | None = None, show_progress: bool = False) -> torch.Tensor:
    """Return the corpus as a 1-D uint8 tensor.

    `data=None` uses the standard library sources, cached under `cache_dir` (default
    ~/.cache/zerospeed, or $ZEROSPEED_CACHE). The cache file is written to a temporary name
    and renamed, so ranks that build it at the same time never read a half-written file.
    """
    if data is not None:
        blob = _concat(_user_sources(Path(data)), max_bytes, show_progress)
        if not blob:
            raise ValueError(f"--data {data}: no readable text found")
        return torch.frombuffer(bytearray(blob), dtype=torch.uint8)

    cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    key = hashlib.sha1(f"{sysconfig.get_paths()['stdlib']}|{sys.version}|{max_bytes}".encode()).hexdigest()[:12]
    cache_file = cache_dir / f"stdlib-py{sys.version_info[0]}{sys.version_info[1]}-{key}.pt"
    if cache_file.exists():
        return torch.load(cache_file)
    blob = _concat(stdlib_sources(), max_bytes, show_progress)
    tokens = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    torch.save(tokens, tmp)
    os.replace(tmp, cache_file)
    return tokens


def split(tokens: torch.Tensor, val_fraction: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Train/val split: the last `val_fraction` of the bytes is validation."""
    n_val = max(1, int(len(tokens) * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


class ByteWindows(Dataset):
    """Non-overlapping windows: item i is (x, y) with x = bytes[i*seq : (i+1)*seq] and y = x shifted by one."""

    def __init__(self, tokens: torch.Tensor, seq: int) -> None:
        if len(tokens) < seq + 1:
            raise ValueError(f"corpus of {len(tokens)} bytes is shorter than one window of seq={seq} + 1")
        self.tokens = tokens
        self.seq = seq

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        chunk = self.tokens[i * self.seq: (i + 1) * self.seq + 1].long()
        return chunk[:-1], chunk[1:]


def build_datasets(data: str | None, seq: int, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   val_fraction: float = 0.05, show_progress: bool = False) -> tuple[ByteWindows, ByteWindows]:
    """(train, val) window datasets over the corpus."""
    train, val = split(load_corpus(data, max_bytes=max_bytes, show_progress=show_progress), val_fraction)
    return ByteWindows(train, seq), ByteWindows(val, seq)
