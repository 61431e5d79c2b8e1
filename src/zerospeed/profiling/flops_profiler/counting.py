"""FLOP and MAC counting per aten op, attributed to the module that runs it.

Matmul-family ops (mm, addmm, bmm, baddbmm, convolution, attention kernels) are counted
by torch's own formulas (`torch.utils.flop_counter.flop_registry`): exact, 2 FLOPs per
multiply-accumulate, bias additions left out (as DeepSpeed's Linear count). The CPU
flash-attention kernel, missing from that registry, uses torch's `sdpa_flop_count`
(QK^T and PV, no causal discount). Norms and activations use DeepSpeed's estimates:
layer/group/instance/batch norm in training 5 FLOPs per element with an affine weight
(4 without), batch norm in eval 2 (1); rms_norm 4 (3); activations and softmax 1 per
element; these have no MACs. Other elementwise ops, reductions, views and embeddings
count zero.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

aten = torch.ops.aten


def _numel(tensor: Any) -> int:
    return math.prod(tensor.shape) if isinstance(tensor, torch.Tensor) else 0


def _cpu_flash_attention(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(tuple(query.shape), tuple(key.shape), tuple(value.shape))


def _norm(affine_index: int) -> Callable[..., int]:
    def count(input, *args, **kwargs) -> int:
        weight = args[affine_index - 1] if len(args) >= affine_index else kwargs.get("weight")
        return _numel(input) * (5 if weight is not None else 4)

    return count


def _batch_norm(input, weight=None, bias=None, running_mean=None, running_var=None, training=False, *args, **kwargs) -> int:
    affine = weight is not None
    return _numel(input) * ((5 if affine else 4) if training else (2 if affine else 1))


def _batch_norm_eval(input, weight=None, *args, **kwargs) -> int:
    return _numel(input) * (2 if weight is not None else 1)


def _per_element(input, *args, **kwargs) -> int:
    return _numel(input)


# ops whose FLOPs are 2 x MACs (everything from torch's registry is of this kind)
MAC_OPS: dict[Any, Callable[..., int]] = {
    packet: (lambda formula: lambda *a, out=None, **k: formula(*a, **k, out_val=out))(formula)
    for packet, formula in flop_registry.items()
}
MAC_OPS[aten._scaled_dot_product_flash_attention_for_cpu] = lambda *a, out=None, **k: _cpu_flash_attention(*a, **k)

_ACTIVATIONS = ("relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "elu",
                "elu_", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "mish",
                "mish_", "softplus", "_prelu_kernel", "_softmax", "_log_softmax", "glu")
# ops counted without MACs
ELEMENT_OPS: dict[Any, Callable[..., int]] = {
    getattr(aten, name): (lambda *a, out=None, **k: _per_element(*a, **k))
    for name in _ACTIVATIONS if hasattr(aten, name)
}
ELEMENT_OPS.update({
    aten.native_layer_norm: lambda *a, out=None, **k: _norm(2)(*a, **k),
    aten.native_group_norm: lambda *a, out=None, **k: _norm(1)(*a, **k),
    aten.native_batch_norm: lambda *a, out=None, **k: _batch_norm(*a, **k),
    aten._native_batch_norm_legit: lambda *a, out=None, **k: _batch_norm(*a, **k),
    aten._native_batch_norm_legit_no_training: lambda *a, out=None, **k: _batch_norm_eval(*a, **k),
})


def rms_norm_flops(input, normalized_shape=None, weight=None, eps=None) -> int:
    return _numel(input) * (4 if weight is not None else 3)


class OpCounter(TorchDispatchMode):
    """Counts FLOPs and MACs of every op run under it into `sink(flops, macs)`."""

    def __init__(self, sink: Callable[[int, int], None]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = MAC_OPS.get(packet)
        if formula is not None:
            flops = int(formula(*args, out=out, **kwargs))
            self.sink(flops, flops // 2)
        else:
            formula = ELEMENT_OPS.get(packet)
            if formula is not None:
                self.sink(int(formula(*args, out=out, **kwargs)), 0)
        return out


class FunctionCounter(TorchFunctionMode):
    """Counts functions that reach aten only as many elementwise pieces (rms_norm)."""

    def __init__(self, sink: Callable[[int, int], None]) -> None:
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.rms_norm or func is getattr(torch, "rms_norm", None):
            self.sink(rms_norm_flops(*args, **kwargs), 0)
        return func(*args, **kwargs)
