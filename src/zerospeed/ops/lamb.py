"""DeepSpeed's `FusedLamb` (LAMB, You et al. 2019) as vectorised torch code for any device.

The math is DeepSpeed's kernel (csrc/lamb/fused_lamb_cuda_kernel.cu), per parameter tensor:

    m = b1 m + (1 - b1) g             v = b2 v + (1 - b2) g^2
    u = m / (sqrt(v) + eps) + wd p     (eps_inside_sqrt: m / sqrt(v + eps) + wd p)
    trust = clamp(|p| / |u|, min_coeff, max_coeff), or 1 when |p| or |u| is 0
    p = p - step_size * trust * u      step_size = lr sqrt(1 - b2^t) / (1 - b1^t)  (lr without
                                       bias correction)

Note that, as in DeepSpeed, the moments inside `u` are not bias corrected: the correction is
folded into the step size, so the trust ratio is measured on the uncorrected update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["FusedLamb"]


class FusedLamb(torch.optim.Optimizer):
    """`deepspeed.ops.lamb.FusedLamb` with DeepSpeed's signature; runs on CPU and GPU.

    `max_grad_norm` must stay 0: clip with the config's `gradient_clipping` instead (DeepSpeed's
    engine rejects the key too). `amsgrad` is not supported, as in DeepSpeed.
    `get_lamb_coeffs()` returns the trust ratios of the last step, one per parameter.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_inside_sqrt: bool = False,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        max_coeff: float = 10.0,
        min_coeff: float = 0.01,
        amsgrad: bool = False,
    ) -> None:
        if amsgrad:
            raise RuntimeError("FusedLamb does not support the AMSGrad variant.")
        if max_grad_norm:
            raise ValueError(
                f"FusedLamb max_grad_norm = {max_grad_norm!r} is not supported; "
                "use the config's 'gradient_clipping' instead"
            )
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid betas: {betas}")
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            max_coeff=max_coeff,
            min_coeff=min_coeff,
        )
        super().__init__(params, defaults)
        self.eps_mode = 0 if eps_inside_sqrt else 1
        self.lamb_coeffs: list[torch.Tensor] = []

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.lamb_coeffs = []
        for group in self.param_groups:
            self.lamb_coeffs.extend(self._step_group(group))
        return loss

    def _step_group(self, group: dict[str, Any]) -> list[torch.Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return []
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("FusedLamb does not support sparse gradients")
        grads = [p.grad.to(p.dtype) for p in params]
        beta1, beta2 = group["betas"]
        exp_avgs, exp_avg_sqs, step_sizes = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            step_sizes.append(-self._step_size(group, state["step"]))

        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

        if self.eps_mode == 0:
            denominators = torch._foreach_add(exp_avg_sqs, group["eps"])
            torch._foreach_sqrt_(denominators)
        else:
            denominators = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denominators, group["eps"])
        updates = torch._foreach_div(exp_avgs, denominators)
        if group["weight_decay"] != 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])

        param_norms = torch.stack(torch._foreach_norm(params)).float()
        update_norms = torch.stack(torch._foreach_norm(updates)).float()
        ratios = (param_norms / update_norms).clamp(group["min_coeff"], group["max_coeff"])
        trust = torch.where((param_norms != 0) & (update_norms != 0), ratios, torch.ones_like(ratios))
        coeffs = list(trust.unbind())
        torch._foreach_mul_(updates, [c.to(u.dtype) for c, u in zip(coeffs, updates)])
        torch._foreach_mul_(updates, step_sizes)
        torch._foreach_add_(params, updates)
        return coeffs

    @staticmethod
    def _step_size(group: dict[str, Any], step: int) -> float:
        if not group["bias_correction"]:
            return group["lr"]
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)

    def get_lamb_coeffs(self) -> list[float]:
        """Trust ratio of each parameter tensor in the last step."""
        return [coeff.item() for coeff in self.lamb_coeffs]
