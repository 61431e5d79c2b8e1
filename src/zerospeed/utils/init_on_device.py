"""DeepSpeed's `OnDevice`: build a module's tensors directly on a device (often "meta") in a dtype.

    with zerospeed.OnDevice(dtype=torch.float16, device="meta"):
        model = MyModel()          # no memory allocated; parameters are fp16 meta tensors

Built on torch's own switches, not on patching torch's factory functions as DeepSpeed does:
torch's device context manager sends every factory call without an explicit `device` to
`device`, and the default dtype makes every floating tensor created without an explicit
`dtype` a `dtype` tensor. One difference follows: a tensor created with an explicit floating
dtype (`torch.zeros(3, dtype=torch.float32)`) keeps it, where DeepSpeed would cast it.
"""

from __future__ import annotations

import torch


class OnDevice:
    """Context manager: tensors created inside land on `device`, floating ones in `dtype`.

    `dtype=None` keeps the default dtype; `enabled=False` makes the block a no-op (DeepSpeed's
    switch for code that builds the context unconditionally). Nested blocks restore in order.
    """

    def __init__(self, dtype: torch.dtype | None, device: torch.device | str = "meta", enabled: bool = True) -> None:
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"OnDevice(dtype={dtype}): the dtype must be a floating-point type "
                            "(it becomes the default dtype of floating tensors created inside)")
        self.dtype = dtype
        self.device = device
        self.enabled = enabled
        self._device_context: torch.device | None = None
        self._previous_dtype: torch.dtype | None = None

    def __enter__(self) -> OnDevice:
        if not self.enabled:
            return self
        self._device_context = torch.device(self.device)
        self._device_context.__enter__()
        if self.dtype is not None:
            self._previous_dtype = torch.get_default_dtype()
            torch.set_default_dtype(self.dtype)
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if not self.enabled or self._device_context is None:
            return
        if self._previous_dtype is not None:
            torch.set_default_dtype(self._previous_dtype)
            self._previous_dtype = None
        self._device_context.__exit__(exc_type, exc_value, traceback)
        self._device_context = None


__all__ = ["OnDevice"]
