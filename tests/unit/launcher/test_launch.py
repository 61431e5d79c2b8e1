"""Launcher pieces without processes: resources from flags, worker command, failure line, core binding."""

import argparse
import signal
import sys
from types import SimpleNamespace

import pytest

from zerospeed.errors import ConfigError
from zerospeed.launcher import launch
from zerospeed.launcher.cli import build_parser


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["launch", *argv])


def test_resources_without_hostfile_are_local_slots(tmp_path):
    missing = str(tmp_path / "none")
    assert launch.resolve_resources(_args("--num_procs", "3", "t.py")) == ({"localhost": [0, 1, 2]}, False)
    assert launch.resolve_resources(_args("-i", "localhost:0", "t.py"))[0] == {"localhost": [0]}
    with pytest.raises(ConfigError, match=r"slot 1 of host 'localhost' is out of range; allowed: 0 to 0 \(localhost has "
                                          r"slots=1 in this machine \(no hostfile\)\)"):
        launch.resolve_resources(_args("-i", "localhost:1", "t.py"))  # on CPU, one slot without --num_procs
    with pytest.raises(ConfigError, match="needs a hostfile"):
        launch.resolve_resources(_args("--num_nodes", "2", "t.py"))
    with pytest.raises(ConfigError, match="no such file"):
        launch.resolve_resources(_args("-H", missing, "t.py"))


def test_resources_from_hostfile_and_filters(tmp_path):
    hostfile = tmp_path / "hf"
    hostfile.write_text("a slots=2\nb slots=2\nc slots=1\n")
    resolve = lambda *flags: launch.resolve_resources(_args("-H", str(hostfile), *flags, "t.py"))[0]  # noqa: E731
    assert resolve() == {"a": [0, 1], "b": [0, 1], "c": [0]}
    assert resolve("-e", "b@a:0") == {"a": [1], "c": [0]}
    assert resolve("--num_nodes", "2", "--num_procs", "1") == {"a": [0], "b": [0]}
    with pytest.raises(ConfigError, match="cannot be combined with --include/--exclude"):
        resolve("--num_nodes", "1", "-i", "a")
    with pytest.raises(ConfigError, match=rf"host 'z' is not in {hostfile}"):
        resolve("-i", "z")


def test_worker_command_passes_local_rank_like_deepspeed():
    options = SimpleNamespace(user_script="train.py", user_args=["--x", "1"], module=False, no_python=False,
                              no_local_rank=False, bind_cores_to_rank=False, bind_core_list=None)
    assert launch.worker_command(options) == (sys.executable, ["-u", "train.py", "--local_rank=${local_rank}", "--x", "1"])
    options.module, options.no_local_rank = True, True
    assert launch.worker_command(options) == (sys.executable, ["-u", "-m", "train.py", "--x", "1"])
    options.module, options.no_python = False, True
    assert launch.worker_command(options) == ("train.py", ["--x", "1"])
    options.no_python, options.bind_cores_to_rank, options.bind_core_list = False, True, "0-3"
    assert launch.worker_command(options) == (sys.executable, [
        "-u", "-m", "zerospeed.launcher.launch", "--exec_bound", "0-3", sys.executable, "-u", "train.py", "--x", "1"])


def _failure(local_rank, exitcode, timestamp, message=""):
    return SimpleNamespace(local_rank=local_rank, pid=100 + local_rank, exitcode=exitcode, timestamp=timestamp,
                           message=message, signal_name=lambda: signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>")


def test_root_failure_prefers_a_killed_rank_over_its_peers_errors():
    failures = {0: _failure(0, 1, 10), 1: _failure(1, -9, 11), 2: _failure(2, -15, 9)}
    assert launch.root_failure(failures)[0] == 1  # SIGKILL is the cause; SIGTERM came from the agent
    assert launch.root_failure({3: _failure(1, 1, 5), 2: _failure(0, 2, 5)})[0] == 2  # tie: lowest rank
    assert launch.root_failure({0: _failure(0, 1, 7), 1: _failure(1, 3, 6)})[0] == 1  # earliest


def test_failure_line_is_one_line_naming_rank_node_pid_and_cause():
    error = SimpleNamespace(failures={0: _failure(0, 1, 10), 3: _failure(1, -9, 10)})
    line = launch.failure_line(error, 1, "node-b", 2, 0)
    assert line == ("zerospeed: rank 3 failed: local rank 1 on node 1 (node-b), pid 101, was killed by signal 9 (SIGKILL); "
                    "ranks [0] failed too; the job stops")
    error = SimpleNamespace(failures={1: _failure(1, 3, 10, {"message": "ValueError: bad batch\n"})})
    assert launch.failure_line(error, 0, "localhost", 1, 2) == (
        "zerospeed: rank 1 failed after 2 restart(s): local rank 1 on localhost, pid 101, exited with code 3: "
        "ValueError: bad batch; the job stops")
    assert "\n" not in line


def test_core_lists_and_shares():
    assert launch.parse_core_list("0-3,8,10-11,2") == [0, 1, 2, 3, 8, 10, 11]
    with pytest.raises(ConfigError, match="'x' is not N or N-M"):
        launch.parse_core_list("0,x")
    assert launch.cores_for_rank(list(range(10)), 1, 3) == [3, 4, 5]  # 3 each, core 9 unused (DeepSpeed)
    with pytest.raises(ConfigError, match="1 core\\(s\\) for 2 processes"):
        launch.cores_for_rank([0], 0, 2)


def test_node_rank_from_mpi_and_slurm_variables():
    assert launch.node_rank_from_environment({"SLURM_NODEID": "3"}) == 3
    assert launch.node_rank_from_environment({"OMPI_COMM_WORLD_RANK": "1"}) == 1
    assert launch.node_rank_from_environment({"PMI_RANK": "2"}) == 2
    with pytest.raises(ConfigError, match="--node_rank=-1 but none of SLURM_NODEID"):
        launch.node_rank_from_environment({})


def test_address_towards_picks_the_route_source():
    assert launch._address_towards("127.0.0.1", 29500) == "127.0.0.1"


def test_agent_rejects_a_node_rank_outside_the_world(capsys):
    from zerospeed.launcher.hostfile import encode_world_info

    code = launch.agent_main([f"--world_info={encode_world_info({'a': [0]})}", "--node_rank=3", "t.py"])
    assert code == 2 and "--node_rank 3 outside the 1 nodes" in capsys.readouterr().err


def test_multi_node_needs_the_launcher_program_and_netns_needs_master_addr(tmp_path, capsys, monkeypatch):
    hostfile = tmp_path / "hf"
    hostfile.write_text("a slots=1\nb slots=1\n")
    script = tmp_path / "t.py"
    script.write_text("")
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    assert launch.run(_args("-H", str(hostfile), "--launcher", "slurm", str(script))) == 2
    assert "--launcher slurm needs `srun`, which is not on PATH" in capsys.readouterr().err
    assert launch.run(_args("-H", str(hostfile), "--launcher", "netns", str(script))) == 2
    assert "--launcher netns needs --master_addr" in capsys.readouterr().err
    assert launch.run(_args("-H", str(hostfile), "--no_ssh", str(script))) == 2
    assert "--node_rank -1: with --no_ssh/--launcher torchrun on 2 nodes, allowed: 0 to 1" in capsys.readouterr().err


def test_a_comm_error_is_a_consequence_not_the_cause():
    comm_error = {"message": "CommError: rank 0: all_reduce at step 3 failed ...", "extraInfo": {}}
    failures = {0: _failure(0, 1, 5, comm_error), 1: _failure(1, 1, 6, {"message": "ValueError: bad", "extraInfo": {}})}
    assert launch.root_failure(failures)[0] == 1


def test_workers_write_uncaught_exceptions_to_the_elastic_error_file(tmp_path, monkeypatch):
    import json

    from zerospeed.comm import env

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: seen.append(exc[0]))
    env.record_uncaught_exceptions()
    env.record_uncaught_exceptions()  # idempotent: one hook
    try:
        raise KeyError("missing shard")
    except KeyError:
        sys.excepthook(*sys.exc_info())
    data = json.loads(path.read_text())["message"]
    assert data["message"] == "KeyError: 'missing shard'" and "raise KeyError" in data["extraInfo"]["py_callstack"]
    assert seen == [KeyError]  # the previous hook still prints the traceback
