"""`engine.optimizer.overflow` on 2 ranks: an infinite gradient on rank 0 only makes every
rank's optimizer report the skipped step (the overflow check is global), at every stage."""

from __future__ import annotations

import torch

from tests.distributed.launcher import run_distributed


def overflow_run() -> dict:
    import zerospeed
    from zerospeed import comm

    rank = comm.get_rank()
    out: dict = {}
    for stage in (0, 1, 2, 3):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000, "zero_optimization": {"stage": stage},
                  "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
                  "fp16": {"enabled": True, "initial_scale_power": 4, "hysteresis": 1}}
        engine, *_ = zerospeed.initialize(model=model, config=config)
        seen = [engine.optimizer.overflow]
        x = torch.randn(2, 4)
        blow_up = float("inf") if rank == 0 else 1.0  # only rank 0's gradient overflows
        engine.backward(engine(x).float().sum() * blow_up)
        engine.step()
        seen.append(engine.optimizer.overflow)
        engine.backward(engine(x).float().sum())
        engine.step()
        seen.append(engine.optimizer.overflow)
        out[stage] = (seen, engine.skipped_steps, engine.optimizer.cur_scale)
    return out


def test_overflow_flag_agrees_on_every_rank():
    results = run_distributed(overflow_run, 2, timeout=180)
    for out in results:
        for stage in (0, 1, 2, 3):
            assert out[stage] == ([False, True, False], 1, 8.0), (stage, out[stage])
