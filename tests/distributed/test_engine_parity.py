"""Parity: zerospeed on 2 (and 4) ranks vs one-process torch, over stages, accumulation, clipping.

Tolerance: fp32 losses and parameters within 1e-5 relative (atol 1e-6 for values near 0).
"""

import pytest
import torch

from tests.distributed.launcher import run_distributed
from tests.distributed.parity import reference_run, zerospeed_run

STEPS, LR = 10, 3e-3


def _assert_parity(result, reference, rtol=1e-5, atol=1e-6):
    losses, params, _ = result
    ref_losses, ref_params = reference
    assert losses == pytest.approx(ref_losses, rel=rtol, abs=atol)
    for name, ref in ref_params.items():
        torch.testing.assert_close(params[name], ref.float(), rtol=rtol, atol=atol, msg=f"parameter {name}")


CASES = [
    # (stage, world, micro, gas, clip, two_groups, bucket)
    pytest.param(0, 2, 2, 1, 0.0, False, 500_000_000, id="stage0-plain"),
    pytest.param(0, 2, 1, 4, 0.5, True, 300, id="stage0-gas4-clip-groups-buckets"),
    pytest.param(1, 2, 2, 2, 0.5, True, 300, id="stage1-gas2-clip-groups-buckets"),
    pytest.param(2, 2, 2, 2, 0.5, True, 300, id="stage2-gas2-clip-groups-buckets"),
    pytest.param(2, 2, 2, 1, 0.0, False, 500_000_000, id="stage2-one-bucket"),
    pytest.param(1, 4, 1, 2, 0.5, True, 200, id="stage1-4ranks", marks=pytest.mark.slow),
    pytest.param(2, 4, 1, 3, 0.5, True, 200, id="stage2-4ranks", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("stage,world,micro,gas,clip,two_groups,bucket", CASES)
def test_fp32_matches_single_process_torch(stage, world, micro, gas, clip, two_groups, bucket):
    extra = {"zero_optimization": {"stage": stage, "reduce_bucket_size": bucket}}
    results = run_distributed(zerospeed_run, world, STEPS, micro, gas, LR, clip, two_groups, extra)
    reference = reference_run(STEPS, world, micro, gas, LR, clip, two_groups)
    for result in results:
        _assert_parity(result, reference)
    facts = results[0][2]
    assert facts["global_steps"] == STEPS
    assert facts["micro_steps"] == STEPS * gas
    assert facts["global_samples"] == STEPS * gas * micro * world
    assert facts["skipped_steps"] == 0


def test_offload_matches_no_offload_exactly():
    base = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300}}
    offload = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300, "offload_optimizer": {"device": "cpu"}}}
    plain = run_distributed(zerospeed_run, 2, 6, 2, 2, LR, 0.5, True, base)
    moved = run_distributed(zerospeed_run, 2, 6, 2, 2, LR, 0.5, True, offload)
    assert plain[0][0] == moved[0][0]
    for name, value in plain[0][1].items():
        assert torch.equal(value, moved[0][1][name]), name
    assert moved[0][2]["memory"]["master"] > 0  # the CPU tier holds its own fp32 master copy


@pytest.mark.parametrize("dtype,rtol", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_half_precision_tracks_fp32(dtype, rtol):
    extra = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300}, dtype: {"enabled": True}}
    if dtype == "fp16":
        extra[dtype]["initial_scale_power"] = 8
    half = run_distributed(zerospeed_run, 2, 6, 2, 1, LR, 0.0, False, extra)
    reference = reference_run(6, 2, 2, 1, LR, 0.0, False)
    assert half[0][0] == pytest.approx(reference[0], rel=rtol)
    assert half[0][2]["skipped_steps"] == 0


@pytest.mark.slow
def test_mpu_data_parallel_groups_reduce_only_within_their_group():
    from tests.distributed.parity import zerospeed_pairs_run

    results = run_distributed(zerospeed_pairs_run, 4, 6, 2)
    _, ref_params = reference_run(6, 2, 2, 1, LR, 0.5, False)
    for params in results:
        for name, ref in ref_params.items():
            torch.testing.assert_close(params[name], ref, rtol=1e-5, atol=1e-6, msg=f"parameter {name}")


def test_prescale_predivide_and_communication_dtype():
    exact = {"zero_optimization": {"stage": 1, "reduce_bucket_size": 300},
             "prescale_gradients": True, "gradient_predivide_factor": 2.0}
    results = run_distributed(zerospeed_run, 2, 6, 2, 2, LR, 0.5, True, exact)
    reference = reference_run(6, 2, 2, 2, LR, 0.5, True)
    _assert_parity(results[0], reference)
    # gradients travel in bf16: the run follows fp32 closely but not exactly
    lossy = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300}, "communication_data_type": "bf16"}
    results = run_distributed(zerospeed_run, 2, 6, 2, 2, LR, 0.5, True, lossy)
    assert results[0][0] == pytest.approx(reference[0], rel=1e-2)
    assert results[0][0] != pytest.approx(reference[0], rel=1e-7, abs=0)
