"""Asynchronous file I/O for NVMe offload: a thread pool over preadv/pwritev, O_DIRECT where it works.

`AsyncIO(IOPolicy.from_config(cfg.aio))` opens swap files (`open`) and moves contiguous CPU
tensors to and from them (`write` / `read` return an `IORequest`; `wait()` completes it).
"""

from zerospeed.io.direct import ALIGNMENT, SwapFile, aligned_empty, probe, round_up
from zerospeed.io.engine import AsyncIO, IOPolicy, IORequest, IOStats

__all__ = ["ALIGNMENT", "AsyncIO", "IOPolicy", "IORequest", "IOStats", "SwapFile", "aligned_empty", "probe",
           "round_up"]
