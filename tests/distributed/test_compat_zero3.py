"""DeepSpeed's ZeRO-3 helpers on 2 ranks: safe_get/set_local_* against each rank's slice of the
full value, the rank-0 16-bit state dict, and empty_partition_cache.

DeepSpeed's local partition of a parameter is `ds_tensor.numel()` = ceil(numel / 2) elements
starting at rank * that, zero-padded past the end; the full helpers give the whole value, so
the oracle for every local read is a slice of the full one.
"""

from __future__ import annotations

import pytest
import torch

from tests.distributed.launcher import run_distributed
from tests.distributed.parity import global_micro_batch, make_model


def _slice(full: torch.Tensor, chunk: int, rank: int) -> torch.Tensor:
    flat = full.detach().reshape(-1).float()
    out = torch.zeros(chunk)
    real = flat[rank * chunk : (rank + 1) * chunk]
    out[: real.numel()] = real
    return out


def _owner_offsets(full: torch.Tensor, chunk: int) -> torch.Tensor:
    """`full` plus (owner rank + 1) at each element: what two ranks' local writes of +rank+1 give."""
    owner = torch.arange(full.numel()) // chunk
    return full.reshape(-1).float() + (owner + 1).float()


def _close(a, b) -> bool:
    return bool(torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7))


def local_helpers_run(extra: dict) -> dict:
    import zerospeed
    from zerospeed import comm
    from zerospeed.errors import EngineError
    from zerospeed.utils import (
        safe_get_full_fp32_param, safe_get_full_grad, safe_get_full_optimizer_state, safe_get_local_fp32_param,
        safe_get_local_grad, safe_get_local_optimizer_state, safe_set_local_fp32_param, safe_set_local_grad,
        safe_set_local_optimizer_state,
    )

    rank = comm.get_rank()
    model = make_model()
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.0, "steps_per_print": 1000,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    for key, value in extra.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    engine, *_ = zerospeed.initialize(model=model, config=config)
    named = [(n, p) for n, p in engine.module.named_parameters()]
    checks: dict[str, bool] = {}

    def step_once(step: int) -> None:
        tokens, targets = global_micro_batch(step, 0, 4)
        engine.backward(engine(tokens[rank * 2 : rank * 2 + 2], targets[rank * 2 : rank * 2 + 2]))

    step_once(0)
    for name, param in named:
        chunk = param.ds_tensor.numel()
        if not param.requires_grad:
            checks[f"frozen_none:{name}"] = (safe_get_local_fp32_param(param) is None
                                             and safe_get_local_grad(param) is None)
            continue
        full_grad, full_param = safe_get_full_grad(param), safe_get_full_fp32_param(param)
        local_grad, local_param = safe_get_local_grad(param), safe_get_local_fp32_param(param)
        checks[f"grad:{name}"] = local_grad.numel() == chunk and _close(local_grad, _slice(full_grad, chunk, rank))
        checks[f"param:{name}"] = local_param.numel() == chunk and _close(local_param, _slice(full_param, chunk, rank))
        checks[f"no_state_yet:{name}"] = safe_get_local_optimizer_state(param, "exp_avg") is None
    engine.step()
    for name, param in named:
        if not param.requires_grad:
            continue
        chunk = param.ds_tensor.numel()
        for key in ("exp_avg", "exp_avg_sq"):
            full = safe_get_full_optimizer_state(param, key)
            local = safe_get_local_optimizer_state(param, key)
            checks[f"{key}:{name}"] = _close(local, _slice(full, chunk, rank))

    # writes: each rank adds (rank + 1) to its own partition; the full value shows both ranks' writes
    weight = engine.module.up.weight
    chunk = weight.ds_tensor.numel()
    before = safe_get_full_fp32_param(weight)
    safe_set_local_fp32_param(weight, safe_get_local_fp32_param(weight) + (rank + 1))
    after = safe_get_full_fp32_param(weight)
    checks["set_param"] = _close(after.reshape(-1), _owner_offsets(before, chunk))
    with zerospeed.zero.GatheredParameters([weight]):
        working = weight.detach().float().reshape(-1).clone()  # the gathered storage is freed on exit
    checks["set_param_reaches_working_copy"] = _close(working, after.reshape(-1).to(weight.dtype).float())
    state_before = safe_get_full_optimizer_state(weight, "exp_avg")
    safe_set_local_optimizer_state(weight, safe_get_local_optimizer_state(weight, "exp_avg") + (rank + 1), "exp_avg")
    checks["set_state"] = _close(safe_get_full_optimizer_state(weight, "exp_avg").reshape(-1),
                                 _owner_offsets(state_before, chunk))
    step_once(1)
    grad_before = safe_get_full_grad(weight)
    safe_set_local_grad(weight, safe_get_local_grad(weight) + (rank + 1))
    checks["set_grad"] = _close(safe_get_full_grad(weight).reshape(-1), _owner_offsets(grad_before, chunk))
    try:
        safe_set_local_fp32_param(weight, torch.zeros(weight.ds_numel))
        checks["wrong_size_rejected"] = False
    except EngineError as error:
        checks["wrong_size_rejected"] = "ds_tensor.numel()" in str(error)
    engine.step()
    return checks


@pytest.mark.parametrize("extra", [
    {},
    {"bf16": {"enabled": True}, "zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
], ids=["fp32", "bf16-cpu-offload"])
def test_local_helpers_equal_the_rank_slice_of_the_full_value(extra):
    for rank, checks in enumerate(run_distributed(local_helpers_run, 2, extra, timeout=180)):
        failed = [name for name, ok in checks.items() if not ok]
        assert not failed, f"rank {rank}: {failed}"


def zero3_engine_utilities_run() -> dict:
    import zerospeed
    from zerospeed import comm
    from zerospeed.utils import safe_get_full_fp32_param
    from zerospeed.zero.stage3.params import ZeroParamStatus

    rank = comm.get_rank()
    model = make_model()
    reference = make_model().state_dict()
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                                    "stage3_gather_16bit_weights_on_model_save": True}}
    engine, *_ = zerospeed.initialize(model=model, config=config)
    out: dict = {"gather_flag": engine.zero_gather_16bit_weights_on_model_save(),
                 "partition_weights": engine.zero_optimization_partition_weights()}
    state = engine._zero3_consolidated_16bit_state_dict()
    if rank == 0:
        out["keys_match"] = list(state) == list(reference)
        out["values_match"] = all(torch.equal(state[k], reference[k]) for k in reference)
        out["on_cpu"] = all(v.device.type == "cpu" for v in state.values())
    else:
        out["none_elsewhere"] = state is None
    without_frozen = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if rank == 0:
        out["frozen_excluded"] = "frozen.weight" not in without_frozen and "up.weight" in without_frozen
    full = safe_get_full_fp32_param(engine.module.up.weight)
    out["full_matches_state"] = rank != 0 or torch.equal(full, state["up.weight"])

    coordinator = engine.optimizer.coordinator
    coordinator.unshard(engine.module.up)
    out["gathered_before"] = engine.module.up.weight.ds_status is ZeroParamStatus.AVAILABLE
    engine.empty_partition_cache()
    out["released_after"] = (engine.module.up.weight.ds_status is ZeroParamStatus.NOT_AVAILABLE
                             and engine.module.up.weight.numel() == 0)
    tokens, targets = global_micro_batch(0, 0, 4)
    engine.backward(engine(tokens[rank * 2 : rank * 2 + 2], targets[rank * 2 : rank * 2 + 2]))
    engine.step()
    out["trains_after_release"] = engine.global_steps == 1
    return out


def test_zero3_engine_utilities():
    for rank, out in enumerate(run_distributed(zero3_engine_utilities_run, 2, timeout=180)):
        failed = [name for name, ok in out.items() if ok is not True]
        assert not failed, f"rank {rank}: {failed} in {out}"
