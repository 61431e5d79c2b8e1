"""initialize() starts every rank from rank 0's parameters and buffers, bucket by bucket."""

import torch

from tests.distributed.launcher import run_distributed


def _built_with_rank_seed(bucket_bytes: int):
    import zerospeed
    from zerospeed.runtime import model_sync

    rank = int(__import__("os").environ["RANK"])
    model_sync.BUCKET_BYTES = bucket_bytes
    calls = []
    original = model_sync._broadcast_bucket
    model_sync._broadcast_bucket = lambda bucket, src, group: (calls.append(len(bucket)), original(bucket, src, group))
    torch.manual_seed(rank)  # every rank builds different weights
    model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.BatchNorm1d(40), torch.nn.Linear(40, 3))
    model[1].running_mean.uniform_()
    model[1].num_batches_tracked.fill_(rank + 5)  # an int64 buffer: its own dtype group
    engine, *_ = zerospeed.initialize(model=model, model_parameters=model.parameters(),
                                      config={"train_micro_batch_size_per_gpu": 1,
                                              "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})
    return {n: t.detach().clone() for n, t in engine.module.state_dict().items()}, calls


def test_every_rank_holds_rank0_weights_and_buffers_with_small_buckets():
    results = run_distributed(_built_with_rank_seed, 2, 200 * 4)  # 200 floats: several buckets, one tensor alone
    (state0, calls0), (state1, _) = results
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.BatchNorm1d(40), torch.nn.Linear(40, 3))
    assert torch.equal(state0["0.weight"], reference[0].weight.detach())
    for name, value in state0.items():
        assert torch.equal(state1[name], value), name
    assert int(state1["1.num_batches_tracked"]) == 5
    assert len(calls0) >= 4 and 1 in calls0 and max(calls0) > 1  # bounded buckets, a big tensor alone
