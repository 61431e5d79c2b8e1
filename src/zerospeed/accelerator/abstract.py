"""The device interface the runtime talks to, so no other module branches on CPU vs CUDA."""

from __future__ import annotations

import abc
import contextlib
from typing import Any

import torch


class Accelerator(abc.ABC):
    """One kind of device: naming, memory, streams, and which comm backend suits it."""

    name: str

    @abc.abstractmethod
    def device_name(self, index: int | None = None) -> str:
        """`"cpu"` or `"cuda:3"`: a string torch accepts as a device."""

    @abc.abstractmethod
    def current_device(self) -> int: ...

    @abc.abstractmethod
    def set_device(self, index: int) -> None: ...

    @abc.abstractmethod
    def device_count(self) -> int: ...

    @abc.abstractmethod
    def communication_backend_name(self) -> str:
        """The torch.distributed backend for tensors on this device (gloo, nccl)."""

    @abc.abstractmethod
    def is_bf16_supported(self) -> bool: ...

    @abc.abstractmethod
    def is_fp16_supported(self) -> bool: ...

    @abc.abstractmethod
    def synchronize(self, index: int | None = None) -> None: ...

    @abc.abstractmethod
    def memory_allocated(self, index: int | None = None) -> int: ...

    @abc.abstractmethod
    def max_memory_allocated(self, index: int | None = None) -> int: ...

    @abc.abstractmethod
    def reset_peak_memory_stats(self, index: int | None = None) -> None: ...

    @abc.abstractmethod
    def total_memory(self, index: int | None = None) -> int: ...

    @abc.abstractmethod
    def Stream(self, **kwargs: Any) -> Any:  # noqa: N802 - DeepSpeed's accelerator name
        """A side stream (a do-nothing stand-in where the device has none)."""

    @abc.abstractmethod
    def Event(self, **kwargs: Any) -> Any:  # noqa: N802
        """An event for timing and stream sync (a stand-in that records wall time on CPU)."""

    @abc.abstractmethod
    def stream(self, stream: Any) -> contextlib.AbstractContextManager: ...

    @abc.abstractmethod
    def current_stream(self, index: int | None = None) -> Any: ...

    def device(self, index: int | None = None) -> torch.device:
        return torch.device(self.device_name(index))

    def current_device_name(self) -> str:
        return self.device_name(self.current_device())

    def is_available(self) -> bool:
        return self.device_count() > 0

    def empty_cache(self) -> None:
        """Return cached device memory to the system (nothing to do where there is no cache)."""

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def memory_reserved(self, index: int | None = None) -> int:
        return self.memory_allocated(index)

    def available_memory(self, index: int | None = None) -> int:
        return max(self.total_memory(index) - self.memory_reserved(index), 0)

    def pin_memory(self, tensor: torch.Tensor) -> torch.Tensor:
        """Page-locked copy for fast host-device copies; identity where pinning is pointless."""
        return tensor

    def is_pinned(self, tensor: torch.Tensor) -> bool:
        return tensor.is_pinned() if tensor.device.type == "cpu" and self.name != "cpu" else False

    def memory_stats(self, index: int | None = None) -> dict[str, int]:
        return {
            "allocated_bytes": self.memory_allocated(index),
            "peak_allocated_bytes": self.max_memory_allocated(index),
            "total_bytes": self.total_memory(index),
        }

    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == self.device().type
