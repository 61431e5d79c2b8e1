"""Engine behaviour on 2 ranks: fp16 overflow handling, the DeepSpeed API surface, memory accounting."""

import pytest

from tests.distributed.engine_cases import api_surface_run, fp16_overflow_run, memory_report_run
from tests.distributed.launcher import run_distributed
from zerospeed.zero.estimators import model_states_bytes_per_rank


def test_fp16_overflow_on_one_rank_skips_the_step_everywhere_and_follows_hysteresis():
    results = run_distributed(fp16_overflow_run, 2, [2, 3])
    for result in results:
        # hysteresis 2: the first overflow only uses up hysteresis, the second halves the scale
        assert result["scales"] == [256.0, 256.0, 256.0, 128.0, 128.0, 128.0]
        assert result["applied"] == [True, True, False, False, True, True]
        assert result["unchanged"] == [False, False, True, True, False, False]
        assert result["skipped"] == 2
        assert result["global_steps"] == 6
        assert result["loss_scale_attr"] == 128.0


def test_api_surface():
    out = run_distributed(api_surface_run, 2)[0]
    assert out["client_sched_is_same"]
    assert out["client_sched_lrs"] == [0.005, 0.0025, 0.00125]
    assert out["optimizer_param_groups_lr"] == 0.00125
    assert out["callable_inner"] == "SGD"
    # 10 samples, 2 ranks, micro 2: 5 per rank -> batches of 2, 2, 1
    assert [len(b) for b in out["loader_batches"]] == [2, 2, 1]
    assert out["repeating_count"] == 7
    assert out["accessors"] == (8, 2, 2, 0, False, False, 2)
    assert out["boundaries"] == [False, True, False, True]
    assert out["mom"] == [0.9]
    assert out["after_set_gas"] == 4
    assert "set_train_batch_size(6)" in out["set_bad_batch"] and "= 4" in out["set_bad_batch"]
    assert "no_sync()" in out["no_sync_stage2"] and "stage 2" in out["no_sync_stage2"]
    assert "late.weight" in out["late_param"] and "after initialize()" in out["late_param"]
    assert "zero_allow_untested_optimizer" in out["untested_optimizer"]
    assert out["untested_allowed_stage"] == 1
    assert "needs an optimizer" in out["no_optimizer"]
    assert out["no_optimizer_returns_none"]


@pytest.mark.parametrize("stage,bucket,dtype", [(1, 300, None), (2, 300, None), (2, 10**9, "bf16"), (0, 300, None)])
def test_memory_report_counts_partitions_exactly(stage, bucket, dtype):
    results = run_distributed(memory_report_run, 2, stage, bucket, dtype)
    numels = results[0]["numels"]
    total_moments = 0
    for rank, result in enumerate(results):
        expected = model_states_bytes_per_rank(
            numels, 2, rank, stage, param_bytes=2 if dtype else 4, mixed=bool(dtype), reduce_bucket_size=bucket
        )
        report = result["report"]
        assert report["params"] == expected["params"] + result["frozen_bytes"]
        assert report["grads"] == expected["grads"]
        assert report["master"] == expected["master"]
        assert result["moment_elements"] * 4 == expected["optimizer_states"]
        total_moments += result["moment_elements"]
        if stage == 2:
            full_gradient = model_states_bytes_per_rank(numels, 2, rank, 0, reduce_bucket_size=bucket)["grads"]
            assert 0 < report["comm_buffers"] <= full_gradient
    # every trainable element has exactly one exp_avg and one exp_avg_sq across the ranks
    factor = 1 if stage >= 1 else 2
    assert total_moments == factor * 2 * sum(numels)


@pytest.mark.parametrize("stage", [0, 2])
def test_safe_get_and_set_full_state(stage):
    from tests.distributed.engine_cases import safe_helpers_run

    for out in run_distributed(safe_helpers_run, 2, stage):
        assert out == {"param_equal": True, "grad_close": True, "exp_avg_close": True,
                       "set_param_visible": True, "set_state_visible": True}


def test_stage2_staging_stays_a_few_buckets_when_buckets_complete_in_order():
    from tests.distributed.engine_cases import staging_run
    from zerospeed.zero.grad_reducer import MAX_IN_FLIGHT

    for report in run_distributed(staging_run, 2):
        bucket_bytes = 320 * 4  # Linear(16, 16): 272 elements padded to 2 ranks x 32 -> 320, fp32
        assert report["comm_buffers"] == (MAX_IN_FLIGHT + 1) * bucket_bytes
        assert report["grads"] == 8 * 160 * 4  # only each rank's partitions persist
