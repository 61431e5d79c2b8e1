"""The comms logger on a real engine: bytes per step equal the analytic bytes of the bucket layout.

Two gloo ranks train TinyLM (tests/distributed/parity.py) at ZeRO stages 0, 1 and 2 with
gradient accumulation 2. The expected traffic is computed from `zero.flat.plan_buckets` and
`bucket_layout` alone (not from the logger or the engine's objects):

- stage 0: one all_reduce per padded bucket, at the accumulation boundary, fp32;
- stage 1: one reduce_scatter per padded bucket at the boundary;
- stage 2: one reduce_scatter per padded bucket per micro-step;
- stages 1/2: after the step one all_gather per padded bucket, plus one fp32 scalar
  all_reduce for the global gradient norm.

The same run checks DeepSpeed's table (rows per message size), bandwidth arithmetic, the
engine printing it every `steps_per_print`, and the `prof_all`/`prof_ops` filter.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import pytest

from tests.distributed.launcher import run_distributed

BUCKET = 300  # reduce_bucket_size, in elements: several buckets of awkward sizes
GAS, STEPS, PRINT_EVERY = 2, 4, 2


def expected_buckets(world: int) -> list[int]:
    """Padded bucket sizes (elements) of TinyLM's trainable parameters, from the layout functions."""
    from tests.distributed.parity import make_model
    from zerospeed.zero.flat import bucket_layout, plan_buckets

    numels = [p.numel() for p in reversed(list(make_model().parameters())) if p.requires_grad]
    return [bucket_layout([numels[i] for i in bucket], world).padded_numel for bucket in plan_buckets(numels, BUCKET)]


def expected_step(stage: int, world: int) -> dict[str, dict[str, int]]:
    """{op: {"calls", "bytes"}} one optimizer step (GAS micro-steps) must move on each rank."""
    padded = expected_buckets(world)
    fp32 = 4
    full = {"calls": len(padded), "bytes": sum(padded) * fp32}
    if stage == 0:
        return {"all_reduce": full}
    reductions = GAS if stage == 2 else 1
    return {
        "reduce_scatter_tensor": {"calls": reductions * full["calls"], "bytes": reductions * full["bytes"]},
        "all_gather_into_tensor": full,
        "all_reduce": {"calls": 1, "bytes": fp32},  # squared grad norm, one fp32 scalar
    }


def _train(stage: int, comms_logger: dict) -> dict:
    import torch

    import zerospeed
    from tests.distributed.parity import global_micro_batch, make_model, use_sometimes
    from zerospeed import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    model = make_model()
    config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": GAS, "gradient_clipping": 0.5,
        "steps_per_print": PRINT_EVERY, "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
        "zero_optimization": {"stage": stage, "reduce_bucket_size": BUCKET}, "comms_logger": comms_logger,
    }
    engine, *_ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    comm.reset_log()
    per_step, printed = [], io.StringIO()
    with contextlib.redirect_stdout(printed):
        for step in range(STEPS):
            before = comm.comm_log.totals()
            for micro in range(GAS):
                tokens, targets = global_micro_batch(step, micro, 2 * world)
                engine.backward(engine(tokens[rank * 2:rank * 2 + 2], targets[rank * 2:rank * 2 + 2], use_sometimes(step)))
                engine.step()
            after = comm.comm_log.totals()
            per_step.append({op: {k: v - before.get(op, {}).get(k, 0) for k, v in entry.items()} for op, entry in after.items()})
    assert torch.isfinite(torch.tensor(engine.get_global_grad_norm()))
    return {"per_step": per_step, "summary": comm.log_summary(return_dict=True)["summary"], "printed": printed.getvalue()}


def _all_stages() -> dict:
    results = {}
    for stage in (0, 1, 2):
        results[stage] = _train(stage, {"enabled": True})
    results["filtered"] = _train(2, {"enabled": True, "prof_all": False, "prof_ops": ["reduce_scatter_tensor"]})
    return results


@pytest.fixture(scope="module")
def runs():
    return run_distributed(_all_stages, 2, timeout=240)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_counted_bytes_per_step_equal_the_bucket_arithmetic(runs, stage):
    want = expected_step(stage, world=2)
    for rank_result in runs:
        for step, counted in enumerate(rank_result[stage]["per_step"]):
            assert counted == want, f"stage {stage} step {step}"


@pytest.mark.parametrize("stage", [0, 2])
def test_rows_per_message_size_and_bandwidths(runs, stage):
    padded = expected_buckets(2)
    reduce_op = "all_reduce" if stage == 0 else "reduce_scatter_tensor"
    per_step = 1 if stage == 0 else GAS
    summary = runs[0][stage]["summary"]
    rows = {size: row["count"] for size, row in summary[reduce_op].items() if stage != 0 or size != 4}
    assert rows == {size * 4: count * STEPS * per_step for size, count in Counter(padded).items()}
    factor = 1.0 if reduce_op == "all_reduce" else 0.5  # 2(n-1)/n and (n-1)/n for n = 2
    for row in summary[reduce_op].values():
        assert row["avg_latency_ms"] > 0 and row["tput_avg_gbps"] > 0  # async ops timed at wait()
        assert row["busbw_avg_gbps"] == pytest.approx(row["tput_avg_gbps"] * factor)


def test_engine_prints_the_table_every_steps_per_print_on_rank_0(runs):
    printed = runs[0][2]["printed"]
    assert printed.count("Comm. Op") == STEPS // PRINT_EVERY
    assert "reduce_scatter_tensor" in printed and "busbw_avg (Gbps)" in printed and "total:" in printed
    assert all("Comm. Op" not in r[stage]["printed"] for r in runs[1:] for stage in (0, 1, 2))


def test_prof_ops_records_only_the_chosen_ops(runs):
    for rank_result in runs:
        filtered = rank_result["filtered"]
        assert set(filtered["summary"]) == {"reduce_scatter_tensor"}
        assert filtered["per_step"][-1] == {"reduce_scatter_tensor": expected_step(2, 2)["reduce_scatter_tensor"]}
