"""zerospeed.comm on 2 and 4 gloo processes: values, async handles, p2p, groups, logging, timeouts.

Each launch costs a second or two, so one launch checks many things and returns them.
"""

import contextlib
import io

import pytest
import torch

from tests.distributed.launcher import run_distributed


def _collectives():
    import zerospeed as deepspeed
    import zerospeed.comm as comm

    rank, world = deepspeed.comm.get_rank(), deepspeed.comm.get_world_size()
    comm.reset_log()
    got = {}

    x = torch.full((4,), float(rank + 1))
    deepspeed.comm.all_reduce(x)
    got["all_reduce"] = x.tolist()
    out = torch.empty(2 * world)
    comm.all_gather_into_tensor(out, torch.full((2,), float(rank)))
    got["all_gather"] = out.tolist()
    rs = torch.empty(2)
    comm.reduce_scatter_tensor(rs, torch.arange(2.0 * world))
    got["reduce_scatter"] = rs.tolist()
    b = torch.full((3,), float(rank))
    comm.broadcast(b, src=world - 1)
    got["broadcast"] = b.tolist()

    # Async handles of every collective kind: issue all, then wait.
    ax = torch.full((2,), float(rank))
    aout = torch.empty(world)
    ars = torch.empty(1)
    handles = [
        comm.all_reduce(ax, async_op=True),
        comm.all_gather_into_tensor(aout, torch.tensor([float(rank * 10)]), async_op=True),
        comm.reduce_scatter_tensor(ars, torch.ones(world), async_op=True),
    ]
    got["async_types"] = sorted({type(h).__name__ for h in handles})
    for handle in handles:
        handle.wait()
    got["async"] = (ax.tolist(), aout.tolist(), ars.tolist())

    # all_to_all_single: rank r sends value 100*r + j to rank j.
    a2a_out = torch.empty(world)
    comm.all_to_all_single(a2a_out, torch.tensor([100.0 * rank + j for j in range(world)]))
    got["all_to_all_single"] = a2a_out.tolist()

    # Ring with blocking send/recv (even ranks send first) and with isend/irecv.
    right, left = (rank + 1) % world, (rank - 1) % world
    incoming = torch.empty(1)
    if rank % 2 == 0:
        comm.send(torch.tensor([float(rank)]), right)
        comm.recv(incoming, left)
    else:
        comm.recv(incoming, left)
        comm.send(torch.tensor([float(rank)]), right)
    got["ring"] = incoming.item()
    async_incoming = torch.empty(1)
    requests = [comm.isend(torch.tensor([float(rank) + 0.5]), right), comm.irecv(async_incoming, left)]
    for request in requests:
        request.wait()
    got["async_ring"] = async_incoming.item()

    # The pipe x data x tensor grid: reduce over this rank's data-parallel group.
    grid = comm.groups.build_grid(pp=2)
    dp_value = torch.tensor([float(rank)])
    comm.all_reduce(dp_value, group=grid.data_group)
    got["grid"] = (grid.pp_rank, grid.dp_rank, grid.tp_rank, list(grid.data_ranks), dp_value.item())

    deepspeed.comm.barrier()
    handle = comm.barrier(async_op=True)
    handle.wait()

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = deepspeed.comm.log_summary(return_dict=True)
    got["printed"] = printed.getvalue()
    got["summary"] = summary["summary"]
    return got


@pytest.mark.parametrize("world", [2, 4])
def test_collectives_async_p2p_groups_and_log(world):
    results = run_distributed(_collectives, world)
    total = float(sum(range(1, world + 1)))
    for rank, got in enumerate(results):
        assert got["all_reduce"] == [total] * 4
        assert got["all_gather"] == [float(r) for r in range(world) for _ in range(2)]
        assert got["reduce_scatter"] == [float(world * (2 * rank)), float(world * (2 * rank + 1))]
        assert got["broadcast"] == [float(world - 1)] * 3
        assert got["async_types"] == ["_CheckedWork"]
        ax, aout, ars = got["async"]
        assert ax == [float(sum(range(world)))] * 2
        assert aout == [10.0 * r for r in range(world)]
        assert ars == [float(world)]
        assert got["all_to_all_single"] == [100.0 * j + rank for j in range(world)]
        assert got["ring"] == float((rank - 1) % world)
        assert got["async_ring"] == float((rank - 1) % world) + 0.5

        tp, dp = 1, world // 2
        pp_rank, dp_rank, tp_rank, data_ranks, dp_sum = got["grid"]
        assert (pp_rank, dp_rank, tp_rank) == (rank // (dp * tp), (rank // tp) % dp, rank % tp)
        assert rank in data_ranks and len(data_ranks) == dp
        assert dp_sum == float(sum(data_ranks))

        summary = got["summary"]  # DeepSpeed's shape: {op: {message bytes: {"count", ...}}}
        for op in ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
                   "all_to_all_single", "send", "recv", "isend", "irecv", "barrier"):
            assert sum(row["count"] for row in summary[op].values()) >= 1, op
        assert {size: row["count"] for size, row in summary["all_reduce"].items()} == {16: 1, 8: 1, 4: 1}
        assert sum(row["count"] for row in summary["barrier"].values()) == 2
    printed = results[0]["printed"]
    assert "all_reduce" in printed and "total" in printed and "bytes" in printed
    assert all(r["printed"] == "" for r in results[1:])


def _timeouts():
    """Rank 0 issues ops rank 1 never joins; rank 1 waits on a third group meanwhile."""
    import datetime
    import tempfile

    import zerospeed.comm as comm
    from zerospeed.errors import CommError

    sync_group = comm.new_group([0, 1])
    async_group = comm.new_group([0, 1])
    done_group = comm.new_group([0, 1], timeout=datetime.timedelta(seconds=60))
    messages = []
    if comm.get_rank() == 0:
        import sys

        with tempfile.TemporaryFile("w+") as stderr_file:
            real_stderr, sys.stderr = sys.stderr, stderr_file
            try:
                try:
                    comm.all_reduce(torch.ones(4), group=sync_group)
                except CommError as error:
                    messages.append(str(error))
                comm.set_step(7)
                handle = comm.irecv(torch.empty(3), 1, group=async_group)
                try:
                    handle.wait()
                except CommError as error:
                    messages.append(str(error))
            finally:
                sys.stderr = real_stderr
                comm.set_step(None)
            stderr_file.seek(0)
            messages.append(stderr_file.read())
    comm.barrier(group=done_group)
    return messages


def test_timeouts_name_rank_op_and_step_and_dump_stacks():
    results = run_distributed(_timeouts, 2, comm_timeout=2, timeout=60)
    sync_message, async_message, stderr_text = results[0]
    assert sync_message.startswith("rank 0: all_reduce on tensor shape=(4,)")
    assert "timed out" in sync_message and "at step" not in sync_message
    assert async_message.startswith("rank 0: irecv at step 7 on tensor shape=(3,)")
    assert "timed out" in async_message
    assert "rank 0: all_reduce timed out; Python stacks of this rank" in stderr_text
    assert "rank 0: irecv at step 7 timed out" in stderr_text
    assert "in _timeouts" in stderr_text
    assert results[1] == []
