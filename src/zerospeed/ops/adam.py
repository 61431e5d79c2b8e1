"""DeepSpeed's Adam classes (`FusedAdam`, `DeepSpeedCPUAdam`) as thin layers over torch's Adam.

DeepSpeed compiles its own CUDA and AVX kernels for these. torch ships a fused Adam kernel for
CPU and CUDA, so we keep DeepSpeed's constructor signatures and let torch do the math:
`adam_w_mode=True` is torch's AdamW (decoupled weight decay), False is torch's Adam with L2
weight decay added to the gradient. The one thing torch's Adam cannot do is run without bias
correction (`bias_correction=False`, used by BERT-style DeepSpeed configs); groups that ask for
it take a small foreach path written here, with torch's state layout so checkpoints look alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.optimizer import _get_fused_kernels_supported_devices

__all__ = ["FusedAdam", "DeepSpeedCPUAdam", "torch_implementation_kwargs"]


def _flat_params(params: Iterable[Any]) -> tuple[list[Any], list[torch.Tensor]]:
    """The param list (materialised once, since it may be a generator) and every tensor in it."""
    items = list(params)
    tensors: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, dict):
            tensors.extend(item["params"] if not isinstance(item["params"], torch.Tensor) else [item["params"]])
        elif isinstance(item, tuple):  # (name, tensor) pairs, accepted by torch >= 2.6
            tensors.append(item[1])
        else:
            tensors.append(item)
    return items, tensors


def torch_implementation_kwargs(
    tensors: list[torch.Tensor], foreach: bool | None = None, fused: bool | None = None
) -> dict[str, bool]:
    """`fused=True` where torch has a fused kernel for every tensor, else `foreach=True`.

    Why fused first: on this project's CPU machine torch's fused AdamW steps 8 x 1M fp32
    tensors in 30 ms against 467 ms for foreach and 415 ms for the for-loop (Adagrad 66 vs
    325 ms, SGD 64 vs 187 ms); on CUDA fused is torch's own fastest path too. An explicit
    `foreach` or `fused` from the caller always wins.
    """
    if foreach is not None or fused is not None:
        return {key: value for key, value in (("foreach", foreach), ("fused", fused)) if value is not None}
    fused_devices = _get_fused_kernels_supported_devices()
    can_fuse = bool(tensors) and all(
        t.device.type in fused_devices and t.is_floating_point() and not t.is_sparse for t in tensors
    )
    return {"fused": True} if can_fuse else {"foreach": True}


class _TorchAdam(torch.optim.Adam):
    """torch's Adam with DeepSpeed's knobs: `bias_correction` per group and `set_grad_none`."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        bias_correction: bool,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        amsgrad: bool,
        decoupled_weight_decay: bool,
        set_grad_none: bool,
        foreach: bool | None,
        fused: bool | None,
    ) -> None:
        items, tensors = _flat_params(params)
        if not bias_correction and amsgrad:
            raise ValueError("amsgrad=True needs bias_correction=True")
        super().__init__(
            items,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            decoupled_weight_decay=decoupled_weight_decay,
            **torch_implementation_kwargs(tensors, foreach, fused),
        )
        self.defaults["bias_correction"] = bias_correction
        for group in self.param_groups:
            group.setdefault("bias_correction", bias_correction)
        self.set_grad_none = set_grad_none

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        super().zero_grad(self.set_grad_none if set_to_none is None else set_to_none)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        groups = self.param_groups
        uncorrected = [g for g in groups if not g["bias_correction"]]
        if not uncorrected:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        corrected = [g for g in groups if g["bias_correction"]]
        if corrected:
            # torch's step walks self.param_groups: show it only the groups it can do.
            self.param_groups = corrected
            try:
                super().step()
            finally:
                self.param_groups = groups
        for group in uncorrected:
            self._step_without_bias_correction(group)
        return loss

    def _step_without_bias_correction(self, group: dict[str, Any]) -> None:
        """DeepSpeed's Adam with bias_correction=False: step size lr, no 1/sqrt(1-beta2^t)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if group.get("maximize", False):
            grads = torch._foreach_neg(grads)
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        exp_avgs, exp_avg_sqs = [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            else:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-lr)


class FusedAdam(_TorchAdam):
    """`deepspeed.ops.adam.FusedAdam`: Adam(W) on any device torch supports.

    `adam_w_mode=True` (DeepSpeed's default) decays weights decoupled from the gradient, i.e.
    torch's AdamW; False adds `weight_decay * param` to the gradient (torch's Adam). Unlike
    DeepSpeed's, `amsgrad=True` works (torch implements it). `foreach` / `fused` pass through to
    torch; by default the fused kernel is used wherever torch has one.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        set_grad_none: bool = True,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, bias_correction, betas, eps, weight_decay, amsgrad,
            decoupled_weight_decay=adam_w_mode, set_grad_none=set_grad_none, foreach=foreach, fused=fused,
        )
        self.adam_w_mode = 1 if adam_w_mode else 0


class DeepSpeedCPUAdam(_TorchAdam):
    """`deepspeed.ops.adam.DeepSpeedCPUAdam`: the ZeRO-Offload optimizer, here torch's fused CPU Adam.

    No C++ build step. `fp32_optimizer_states` is accepted for compatibility: states take the
    dtype of the parameters they update, and ZeRO hands this optimizer fp32 master weights.
    """

    optimizer_id = 0

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adamw_mode: bool = True,
        fp32_optimizer_states: bool = True,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            model_params, lr, bias_correction, betas, eps, weight_decay, amsgrad,
            decoupled_weight_decay=adamw_mode, set_grad_none=True, foreach=foreach, fused=fused,
        )
        self.adam_w_mode = adamw_mode
        self.fp32_optimizer_states = fp32_optimizer_states
        self.opt_id = DeepSpeedCPUAdam.optimizer_id
        DeepSpeedCPUAdam.optimizer_id += 1
