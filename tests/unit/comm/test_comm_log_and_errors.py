"""comm_log table, step-aware error messages and the stack dump, without processes."""

import pytest

import zerospeed as deepspeed
from zerospeed.comm import collectives
from zerospeed.comm.collectives import CommLog
from zerospeed.errors import CommError


def test_comm_log_groups_by_op_and_message_size_with_bandwidths():
    log = CommLog()
    log.record("all_reduce", 1000, 0.5, group_size=4)
    log.record("all_reduce", 1000, 0.25, group_size=4)
    log.record("all_reduce", 8, 0.001, group_size=4)
    log.record("broadcast", 8, 0.0)
    summary = log.summary()
    assert list(summary["all_reduce"]) == [8, 1000]  # rows sorted by message size
    row = summary["all_reduce"][1000]
    assert row["count"] == 2 and row["msg_size_bytes"] == 1000 and row["msg_size_str"] == "1000.0 B"
    assert row["total_latency_ms"] == pytest.approx(750.0) and row["avg_latency_ms"] == pytest.approx(375.0)
    algbws = [1000 * 8 / 0.5 / 1e9, 1000 * 8 / 0.25 / 1e9]  # size / latency, in Gbps
    assert row["tput_avg_gbps"] == pytest.approx(sum(algbws) / 2)
    assert row["busbw_avg_gbps"] == pytest.approx(sum(algbws) / 2 * 2 * 3 / 4)  # all_reduce: 2(n-1)/n
    assert summary["broadcast"][8]["busbw_avg_gbps"] == 0.0  # zero latency: no bandwidth, no division error
    assert log.totals() == {"all_reduce": {"calls": 3, "bytes": 2008}, "broadcast": {"calls": 1, "bytes": 8}}
    lines = log.format_table().splitlines()
    assert lines[0].split("  ")[0] == "Comm. Op" and "busbw_avg (Gbps)" in lines[0]
    assert lines[1] == "all_reduce" and lines[2].split()[:3] == ["8.0", "B", "1"]
    assert lines[3].split()[:3] == ["1000.0", "B", "2"]
    assert lines[-1] == "total: 4 calls, 1.97 KB (2016 bytes)"


@pytest.mark.parametrize("op, n, factor", [
    ("all_reduce", 2, 1.0), ("all_reduce", 8, 1.75), ("all_gather_into_tensor", 4, 0.75), ("all_gather", 2, 0.5),
    ("reduce_scatter_tensor", 8, 0.875), ("all_to_all_single", 4, 0.75), ("broadcast", 8, 1.0), ("send", 2, 1.0),
    ("barrier", 4, 1.0), ("reduce", 4, 1.0),
])
def test_bus_bandwidth_factors_follow_nccl_tests(op, n, factor):
    assert collectives.bus_bandwidth_factor(op, n) == pytest.approx(factor)


def test_convert_size_matches_deepspeed():
    assert [collectives.convert_size(n) for n in (0, 512, 1536, 3 * 2**20 + 2**18)] == ["0B", "512.0 B", "1.5 KB", "3.25 MB"]


def test_configure_follows_deepspeed_rules(capsys):
    from zerospeed.config.comms import CommsLoggerConfig

    log = CommLog()
    log.configure(CommsLoggerConfig(enabled=False, prof_all=False, verbose=True))
    assert (log.enabled, log.prof_all, log.verbose) == (False, True, False)  # a disabled section changes nothing
    log.configure(CommsLoggerConfig(enabled=True, prof_all=False, prof_ops=["all_reduce"], verbose=True, debug=True))
    assert (log.enabled, log.prof_all, log.prof_ops, log.verbose, log.debug) == (True, False, ["all_reduce"], True, True)
    assert log.should_record("all_reduce") and not log.should_record("broadcast")
    assert log.should_record("broadcast", prof=True)  # a call's own prof=True always records
    log.start_profiling_op(["broadcast"])
    assert log.should_record("broadcast")
    log.stop_profiling_op(["broadcast", "all_reduce"])
    assert log.prof_ops == [] and not log.should_record("all_reduce")
    log.start_profiling_comms()
    assert log.should_record("anything")
    log.record("all_reduce", 2048, 0.001, group_size=2)
    assert "comm op: all_reduce | time (ms): 1.00 | msg size: 2.0 KB | algbw (Gbps): 0.02 | busbw (Gbps): 0.02" in capsys.readouterr().out


def test_module_configure_and_counters_alone(capsys):
    comm = deepspeed.comm
    saved = (comm.comm_log.enabled, comm.comm_log.prof_all, list(comm.comm_log.prof_ops), comm.comm_log.verbose)
    try:
        comm.configure(deepspeed_config={"comms_logger": {"enabled": True, "prof_ops": ["all_reduce"], "prof_all": False}})
        assert comm.comm_log.enabled and comm.comm_log.prof_ops == ["all_reduce"] and not comm.comm_log.prof_all
        comm.configure(prof_all=True, verbose=False)
        assert comm.comm_log.prof_all and not comm.comm_log.verbose
    finally:
        comm.comm_log.enabled, comm.comm_log.prof_all, comm.comm_log.prof_ops, comm.comm_log.verbose = saved


def test_deepspeed_style_helpers_exist_and_work_alone(capsys):
    comm = deepspeed.comm
    assert comm.get_rank() == 0 and comm.get_world_size() == 1
    for name in ("barrier", "all_reduce", "log_summary", "set_step", "reduce_scatter_tensor", "configure",
                 "all_gather_into_tensor", "broadcast", "all_to_all_single", "send", "recv", "isend", "irecv",
                 "has_comm_data", "get_comm_operation_count", "get_logged_comm_ops"):
        assert callable(getattr(comm, name)), name
    comm.reset_log()
    result = comm.log_summary(return_dict=True)
    assert result["summary"] == {} and result["straggler_analysis"] is None
    assert result["metadata"]["world_size"] == 1 and result["metadata"]["rank"] == 0
    assert not comm.has_comm_data() and comm.get_comm_operation_count() == 0
    out = capsys.readouterr().out
    assert out.startswith("Comm. Op") and "total: 0 calls" in out


def test_collective_before_init_says_how_to_fix():
    import torch

    if deepspeed.comm.is_initialized():
        pytest.skip("another test in this process started a process group")
    with pytest.raises(CommError, match=r"all_reduce called before init_distributed\(\)"):
        deepspeed.comm.all_reduce(torch.ones(1))


def test_timeout_message_names_op_step_and_dumps_stack(capfd):
    collectives.set_step(12)
    try:
        error = collectives._comm_error("all_gather_into_tensor", "tensor shape=(2,)", RuntimeError("Timed out waiting 5ms"))
    finally:
        collectives.set_step(None)
    text = str(error)
    assert isinstance(error, CommError)
    assert text.startswith("rank -1: all_gather_into_tensor at step 12 on tensor shape=(2,) timed out")
    assert "Backend said: Timed out waiting 5ms" in text
    err = capfd.readouterr().err
    assert "all_gather_into_tensor at step 12 timed out; Python stacks" in err
    assert "test_timeout_message_names_op_step_and_dumps_stack" in err


def test_failure_that_is_not_a_timeout_dumps_nothing(capfd):
    error = collectives._comm_error("broadcast", "tensor", RuntimeError("Connection closed by peer"))
    assert "broadcast on tensor failed" in str(error) and "at step" not in str(error)
    assert "Python stacks" not in capfd.readouterr().err
