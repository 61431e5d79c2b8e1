"""Achieved FLOP/s estimate: FLOPs per training sample from the model, or from the flops profiler."""

from __future__ import annotations

import torch

_SEQ_LEN_FIELDS = ("seq_len", "block_size", "seq_length")


def model_flops_per_sample(model: torch.nn.Module) -> tuple[float, str] | None:
    """(forward+backward FLOPs per sample, how it was found), when the model tells.

    In order: `model.flops_per_sample` (number or method), else 6 x parameters x tokens per
    sample with tokens from `model.tokens_per_sample` or `model.config.seq_len` /
    `block_size` / `seq_length` (the transformer rule: 2 FLOPs per parameter per token
    forward, 4 backward).
    """
    value = getattr(model, "flops_per_sample", None)
    if callable(value):
        value = value()
    if value:
        return float(value), "model.flops_per_sample"
    tokens = getattr(model, "tokens_per_sample", None)
    source = "model.tokens_per_sample"
    config = getattr(model, "config", None)
    for field in _SEQ_LEN_FIELDS if tokens is None and config is not None else ():
        if isinstance(getattr(config, field, None), int):
            tokens, source = getattr(config, field), f"model.config.{field}"
            break
    if not tokens:
        return None
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    return 6.0 * params * float(tokens), f"6 x {params} params x {tokens} tokens ({source})"


def tflops_per_rank(flops_per_sample: float, samples_per_sec: float, world_size: int) -> float:
    """Achieved TFLOP/s of one rank when the whole job trains `samples_per_sec`."""
    return flops_per_sample * samples_per_sec / max(world_size, 1) / 1e12
