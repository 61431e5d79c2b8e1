"""DeepSpeed's `DeepSpeedCPUAdagrad` as a thin layer over torch's (fused) Adagrad.

DeepSpeed's AVX kernel computes g += wd p; s += g^2; p -= lr g / (sqrt(s) + eps), which is
torch's Adagrad with lr_decay 0 and initial accumulator 0, so torch does the math.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from zerospeed.ops.adam import _flat_params, torch_implementation_kwargs

__all__ = ["DeepSpeedCPUAdagrad"]


class DeepSpeedCPUAdagrad(torch.optim.Adagrad):
    """`deepspeed.ops.adagrad.DeepSpeedCPUAdagrad` with DeepSpeed's signature.

    `amsgrad` is accepted and, as in DeepSpeed, has no effect; `fp32_optimizer_states` is
    accepted for compatibility (states take the parameters' dtype; ZeRO gives fp32 weights).
    """

    optimizer_id = 0

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0,
        amsgrad: bool = False,
        fp32_optimizer_states: bool = True,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        items, tensors = _flat_params(model_params)
        super().__init__(
            items, lr=lr, eps=eps, weight_decay=weight_decay, **torch_implementation_kwargs(tensors, foreach, fused)
        )
        self.defaults["amsgrad"] = amsgrad
        for group in self.param_groups:
            group.setdefault("amsgrad", amsgrad)
        self.fp32_optimizer_states = fp32_optimizer_states
        self.opt_id = DeepSpeedCPUAdagrad.optimizer_id
        DeepSpeedCPUAdagrad.optimizer_id += 1
