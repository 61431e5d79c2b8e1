"""comm_log table, step-aware error messages and the stack dump, without processes."""

import pytest

import zerospeed as deepspeed
from zerospeed.comm import collectives
from zerospeed.comm.collectives import CommLog
from zerospeed.errors import CommError


def test_comm_log_summary_and_table():
    log = CommLog()
    log.record("all_reduce", 1024, 0.5)
    log.record("all_reduce", 1024, 0.5)
    log.record("broadcast", 8, 0.0)
    assert log.summary() == {
        "all_reduce": {"calls": 2, "bytes": 2048, "seconds": 1.0},
        "broadcast": {"calls": 1, "bytes": 8, "seconds": 0.0},
    }
    lines = log.format_table().splitlines()
    assert lines[0].split() == ["op", "calls", "bytes", "MiB", "seconds", "GB/s"]
    assert lines[2].split()[:3] == ["all_reduce", "2", "2048"]
    assert lines[-1].split()[:3] == ["total", "3", "2056"]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_deepspeed_style_helpers_exist_and_work_alone(capsys):
    comm = deepspeed.comm
    assert comm.get_rank() == 0 and comm.get_world_size() == 1
    for name in ("barrier", "all_reduce", "log_summary", "set_step", "reduce_scatter_tensor",
                 "all_gather_into_tensor", "broadcast", "all_to_all_single", "send", "recv", "isend", "irecv"):
        assert callable(getattr(comm, name)), name
    comm.reset_log()
    assert comm.log_summary(return_dict=True) == {"summary": {}}
    assert "total" in capsys.readouterr().out


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
