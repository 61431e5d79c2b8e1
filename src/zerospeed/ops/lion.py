"""DeepSpeed's Lion classes (`FusedLion`, `DeepSpeedCPULion`) as vectorised torch code.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), per element:

    c = b1 m + (1 - b1) g
    p = p (1 - lr wd) - lr sign(c)
    m = b2 m + (1 - b2) g

Defaults follow DeepSpeed 0.19.8 (betas (0.9, 0.999); the paper suggests (0.9, 0.99)).
sign(0) is 0 as in the paper: DeepSpeed's kernels move a parameter by +-lr even where the
gradient and momentum are exactly zero (unused embedding rows), which is a drift, not a step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["FusedLion", "DeepSpeedCPULion"]


class FusedLion(torch.optim.Optimizer):
    """`deepspeed.ops.lion.FusedLion` with DeepSpeed's signature; runs on CPU and GPU."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        set_grad_none: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid betas: {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.set_grad_none = set_grad_none

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        super().zero_grad(self.set_grad_none if set_to_none is None else set_to_none)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("Lion does not support sparse gradients")
        grads = [p.grad.to(p.dtype) for p in params]
        exp_avgs = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]

        directions = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(directions, grads, alpha=1 - beta1)
        torch._foreach_sign_(directions)
        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_add_(params, directions, alpha=-lr)
        torch._foreach_mul_(exp_avgs, beta2)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


class DeepSpeedCPULion(FusedLion):
    """`deepspeed.ops.lion.DeepSpeedCPULion`: the ZeRO-Offload Lion, same math as FusedLion.

    `fp32_optimizer_states` is accepted for compatibility; states take the parameters' dtype
    and ZeRO hands this optimizer fp32 master weights.
    """

    optimizer_id = 0

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0,
        fp32_optimizer_states: bool = True,
    ) -> None:
        super().__init__(model_params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.fp32_optimizer_states = fp32_optimizer_states
        self.opt_id = DeepSpeedCPULion.optimizer_id
        DeepSpeedCPULion.optimizer_id += 1
