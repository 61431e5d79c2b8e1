"""The CUDA accelerator: torch.cuda underneath, NCCL for collectives."""

from __future__ import annotations

from typing import Any

import torch

from zerospeed.accelerator.abstract import Accelerator


class CudaAccelerator(Accelerator):
    name = "cuda"

    def device_name(self, index: int | None = None) -> str:
        return "cuda" if index is None else f"cuda:{index}"

    def device(self, index: int | None = None) -> torch.device:
        return torch.device("cuda", self.current_device() if index is None else index)

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def set_device(self, index: int) -> None:
        torch.cuda.set_device(index)

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def communication_backend_name(self) -> str:
        return "nccl"

    def is_bf16_supported(self) -> bool:
        return torch.cuda.is_bf16_supported()

    def is_fp16_supported(self) -> bool:
        return True

    def synchronize(self, index: int | None = None) -> None:
        torch.cuda.synchronize(index)

    def memory_allocated(self, index: int | None = None) -> int:
        return torch.cuda.memory_allocated(index)

    def max_memory_allocated(self, index: int | None = None) -> int:
        return torch.cuda.max_memory_allocated(index)

    def reset_peak_memory_stats(self, index: int | None = None) -> None:
        torch.cuda.reset_peak_memory_stats(index)

    def total_memory(self, index: int | None = None) -> int:
        return torch.cuda.get_device_properties(self.current_device() if index is None else index).total_memory

    def Stream(self, **kwargs: Any) -> torch.cuda.Stream:  # noqa: N802
        return torch.cuda.Stream(**kwargs)

    def Event(self, **kwargs: Any) -> torch.cuda.Event:  # noqa: N802
        return torch.cuda.Event(**kwargs)

    def stream(self, stream: Any):
        return torch.cuda.stream(stream)

    def current_stream(self, index: int | None = None) -> torch.cuda.Stream:
        return torch.cuda.current_stream(index)

    def pin_memory(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.pin_memory()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.cuda.manual_seed(seed)

    def memory_reserved(self, index: int | None = None) -> int:
        return torch.cuda.memory_reserved(index)

    def available_memory(self, index: int | None = None) -> int:
        free, _ = torch.cuda.mem_get_info(self.current_device() if index is None else index)
        return free

    def is_pinned(self, tensor: torch.Tensor) -> bool:
        return tensor.is_pinned()
