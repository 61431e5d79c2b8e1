"""Workers shared by the checkpoint tests: build a TinyLM engine, train with RNG-dependent losses, dump state.

No tests here; the test_checkpoint_*.py files launch these functions on N ranks.
"""

from __future__ import annotations

import copy
import os
import random

import numpy
import torch

from tests.distributed.parity import global_micro_batch, make_model, param_groups, use_sometimes

LR, MICRO = 3e-3, 2


def config(stage: int, extra: dict | None = None) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": LR, "warmup_num_steps": 4}},
        "gradient_clipping": 0.5,
        "steps_per_print": 1000,
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 300},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def build(stage: int, extra: dict | None = None, seed: int = 0, model=None):
    import zerospeed

    model = model if model is not None else make_model(seed)
    engine, _, _, _ = zerospeed.initialize(
        model=model, model_parameters=param_groups(model, True, LR), config=config(stage, extra)
    )
    return engine


def train(engine, first_step: int, steps: int) -> list[float]:
    """Global mean losses; each loss is scaled by python/numpy/torch random draws, so RNG state matters."""
    from zerospeed import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    losses = []
    for step in range(first_step, first_step + steps):
        tokens, targets = global_micro_batch(step, 0, MICRO * world)
        mine = slice(rank * MICRO, (rank + 1) * MICRO)
        noise = 1.0 + 0.01 * float(torch.rand(())) + 0.01 * random.random() + 0.01 * float(numpy.random.rand())
        loss = engine(tokens[mine], targets[mine], use_sometimes(step)) * noise
        engine.backward(loss)
        engine.step()
        total = loss.detach().float().reshape(1).clone()
        comm.all_reduce(total)
        losses.append(float(total) / world)
    return losses


def scramble_rng(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed)


def full_params(engine) -> dict[str, torch.Tensor]:
    """The working parameters, whole: gathered at stage 3 (every rank must call), as they are otherwise."""
    import zerospeed

    params = list(engine.module.parameters())
    with zerospeed.zero.GatheredParameters(params, enabled=any(hasattr(p, "ds_tensor") for p in params)):
        return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def state_of(engine) -> dict:
    """This rank's master pieces with optimizer states, working params (whole), counters, lr, scaler."""
    pieces = []
    with engine.optimizer.materialized():  # states swapped in from NVMe (a no-op otherwise)
        for piece in engine.optimizer.logical_pieces():
            state = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v)
                     for k, v in engine.optimizer.state.get(piece.tensor, {}).items()}
            pieces.append((piece.name, tuple(piece.shape), piece.start, piece.end, piece.tensor.detach().clone(), state))
    return {
        "stage": engine.zero_optimization_stage(),
        "pieces": pieces,
        "params": full_params(engine),
        "buffers": {n: b.detach().clone() for n, b in engine.module.named_buffers()},
        "counters": {k: getattr(engine, k) for k in ("global_steps", "global_samples", "micro_steps", "skipped_steps")},
        "lr": engine.get_lr(),
        "scale": engine.loss_scaler.state_dict(),
    }


def assemble(rank_states: list[dict]) -> dict[str, dict[str, torch.Tensor]]:
    """Full per-parameter fp32 tensors ('master' and each elementwise state) from every rank's pieces."""
    full: dict[str, dict[str, torch.Tensor]] = {}
    for rank_state in rank_states:
        for name, shape, start, end, master, state in rank_state["pieces"]:
            numel = int(torch.Size(shape).numel())
            entry = full.setdefault(name, {})
            for key, value in [("master", master), *state.items()]:
                if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == end - start:
                    target = entry.setdefault(key, torch.full((numel,), float("nan"), dtype=value.dtype))
                    target[start:end] = value
                else:
                    entry.setdefault(key, value)
    for name, entry in full.items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() == 1:
                assert not torch.isnan(value).any(), f"{name}.{key} not fully covered by the ranks' pieces"
    return full


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))
