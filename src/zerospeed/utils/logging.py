"""Rank-aware logging: rank 0 speaks by default, every rank can when asked."""

from __future__ import annotations

import logging
import os
import sys

_LOGGER_NAME = "zerospeed"


def _rank() -> int:
    """This process's global rank, read without importing torch.distributed state."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # torch missing or half-initialised: fall back to env
        pass
    return int(os.environ.get("RANK", "0"))


def _build_logger() -> logging.Logger:
    log = logging.getLogger(_LOGGER_NAME)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[zerospeed %(levelname)s] %(message)s"))
        log.addHandler(handler)
        log.setLevel(os.environ.get("ZEROSPEED_LOG_LEVEL", "WARNING").upper())
        log.propagate = False
    return log


logger = _build_logger()


def log_dist(message: str, ranks: list[int] | None = None, level: int = logging.INFO) -> None:
    """Log `message` on the given ranks (default rank 0; `[-1]` means every rank)."""
    ranks = [0] if ranks is None else ranks
    rank = _rank()
    if -1 in ranks or rank in ranks:
        logger.log(level, f"[rank {rank}] {message}")


def warn_once(message: str, _seen: set[str] = set()) -> None:  # noqa: B006 - the set is the memory
    """Warn on rank 0 once per distinct message (unbuilt features, deprecated keys)."""
    if message in _seen:
        return
    _seen.add(message)
    if _rank() == 0:
        logger.warning(message)
