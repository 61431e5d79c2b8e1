"""Stage-3 estimators: DeepSpeed's formula and table, and our exact per-rank bytes."""

import torch

from zerospeed.zero.stage3 import estimators as est


def test_deepspeed_formula_numbers():
    # 1e9 params, 1e8 largest layer, 8 GPUs on 1 node (values from DeepSpeed 0.19.8's formula)
    assert est.estimate_zero3_model_states_mem_needs(10**9, 10**8, 8, 1, True, True, True) == (27 * 10**9, 4 * 10**8, 4 * 10**8)
    assert est.estimate_zero3_model_states_mem_needs(10**9, 10**8, 8, 1, False, False, False) == (
        48 * 10**9, 4 * 10**8 + 18 * 10**9 // 8, 4 * 10**8)


def test_all_live_counts_partitioned_parameters_by_ds_numel(capsys):
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 10))
    assert est.model_to_params(model) == (1001000 + 10010, 1001000)
    model[0].weight.ds_numel = 10**6
    model[0].weight.data = torch.empty(0)
    assert est.model_to_params(model) == (1001000 + 10010, 1001000)
    est.estimate_zero3_model_states_mem_needs_all_live(model, num_gpus_per_node=2)
    out = capsys.readouterr().out
    assert "1M total params, 1M largest layer params" in out
    assert out.count("offload_param=") == 6 and "offload_param=cpu , offload_optimizer=cpu , zero_init=1" in out


def test_exact_bytes_per_rank():
    report = est.stage3_model_states_bytes_per_rank([1001, 10], 2, persistence_threshold=10)
    assert report == {"params": (501 + 5 + 10) * 4, "grads": 506 * 4, "master": 0, "optimizer_states": 506 * 8}
