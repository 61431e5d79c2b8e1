"""The collectives the runtime needs, on 2 and 4 gloo processes."""

import pytest
import torch

from tests.distributed.launcher import DistributedTestError, run_distributed


def _collectives():
    import zerospeed.comm as comm

    rank, world = comm.get_rank(), comm.get_world_size()
    x = torch.full((4,), float(rank + 1))
    comm.all_reduce(x)
    out = torch.empty(2 * world)
    comm.all_gather_into_tensor(out, torch.full((2,), float(rank)))
    rs = torch.empty(2)
    comm.reduce_scatter_tensor(rs, torch.arange(2.0 * world))
    b = torch.full((3,), float(rank))
    comm.broadcast(b, src=world - 1)
    return x.tolist(), out.tolist(), rs.tolist(), b.tolist()


@pytest.mark.parametrize("world", [2, 4])
def test_collectives_give_expected_values(world):
    results = run_distributed(_collectives, world)
    total = sum(range(1, world + 1))
    for rank, (x, out, rs, b) in enumerate(results):
        assert x == [float(total)] * 4
        assert out == [float(r) for r in range(world) for _ in range(2)]
        assert rs == [float(world * (2 * rank)), float(world * (2 * rank + 1))]
        assert b == [float(world - 1)] * 3


def _mismatched():
    import zerospeed.comm as comm

    if comm.get_rank() == 0:
        comm.all_reduce(torch.ones(4))
    return "done"


def test_mismatched_collective_times_out_naming_rank_and_op():
    with pytest.raises(DistributedTestError) as info:
        run_distributed(_mismatched, 2, comm_timeout=3, timeout=60)
    text = str(info.value)
    assert "rank 0: all_reduce" in text
    assert "CommError" in text
