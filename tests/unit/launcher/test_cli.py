"""The `zerospeed` console script: --version, report, report --json (run as a subprocess)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import zerospeed
from zerospeed.launcher import cli

REPORT_KEYS = {"python", "platform", "torch", "zerospeed", "accelerator", "comm_backends", "cpu",
               "shm", "async_io", "optional_packages", "ops", "problems"}


def _script() -> list[str]:
    path = shutil.which("zerospeed")
    return [path] if path else [sys.executable, "-m", "zerospeed"]


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([*_script(), *args], capture_output=True, text=True, timeout=120, env=env)


def test_version_equals_package_version():
    done = _run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == zerospeed.__version__


def test_python_dash_m_works_too():
    done = subprocess.run([sys.executable, "-m", "zerospeed", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == zerospeed.__version__


def test_version_does_not_import_torch():
    code = (
        "import sys\n"
        "from zerospeed.launcher.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


def test_report_json_has_every_key():
    done = _run("report", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == REPORT_KEYS
    assert report["zerospeed"]["version"] == zerospeed.__version__
    assert report["torch"]["build"] in ("cpu", "cuda", "rocm")
    assert set(report["comm_backends"]) == {"available", "gloo", "nccl", "mpi"}
    assert report["problems"] == []  # this machine can train
    assert "nccl_version" in report["torch"]
    assert report["shm"]["path"] == "/dev/shm"
    assert isinstance(report["async_io"]["o_direct"], bool) and isinstance(report["async_io"]["io_uring"], bool)
    assert report["async_io"]["o_direct_reason"] and report["async_io"]["io_uring_reason"]
    assert report["accelerator"]["name"] in ("cpu", "cuda")
    assert isinstance(report["accelerator"]["bf16"], bool) and isinstance(report["accelerator"]["fp16"], bool)
    assert report["cpu"]["logical_cores"] >= 1 and report["cpu"]["ram_bytes"] > 0
    assert set(report["optional_packages"]) >= {"pydantic", "hjson", "psutil", "tqdm", "safetensors", "numpy",
                                                 "tensorboard", "wandb", "deepspeed"}
    assert report["optional_packages"]["pydantic"]  # a required dependency is always there
    assert "no build step needed" in report["ops"]


def test_report_table_is_aligned_and_says_why_accelerator_was_chosen():
    done = _run("report", env_extra={"ZEROSPEED_ACCELERATOR": "cpu"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "zerospeed environment report"
    rows = {line.split("  ", 1)[0]: line for line in lines if "  " in line}
    for label in ("python", "torch", "zerospeed", "accelerator", "chosen because", "device count",
                  "comm backend gloo", "bf16 supported", "CPU cores", "RAM", "/dev/shm", "O_DIRECT", "io_uring",
                  "pydantic", "deepspeed", "ops", "problems"):
        assert label in rows, label
    value_columns = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in rows.values()}
    assert len(value_columns) == 1  # every value starts in the same column
    assert "ZEROSPEED_ACCELERATOR=cpu in the environment" in rows["chosen because"]
    assert "no build step needed" in rows["ops"]
    assert "none: this set-up can train" in rows["problems"]


def test_report_survives_a_bad_accelerator_setting_but_exits_non_zero():
    done = _run("report", "--json", env_extra={"ZEROSPEED_ACCELERATOR": "bogus"})
    assert done.returncode == 1, done.stderr  # a set-up that cannot train
    report = json.loads(done.stdout)
    assert report["accelerator"]["name"] is None and "'bogus'" in report["accelerator"]["reason"]
    assert len(report["problems"]) == 1 and "accelerator setting is invalid" in report["problems"][0]


def test_problems_name_missing_distributed_and_gloo():
    from zerospeed.launcher.report import find_problems

    base = {"accelerator": {"name": "cpu", "reason": ""}}
    assert find_problems({**base, "comm_backends": {"available": True, "gloo": True}}) == []
    assert "torch.distributed is not available" in find_problems({**base, "comm_backends": {"available": False, "gloo": False}})[0]
    assert "gloo backend is missing" in find_problems({**base, "comm_backends": {"available": True, "gloo": False}})[0]


def test_async_io_probes(tmp_path):
    from zerospeed.launcher.report import io_uring_probe, o_direct_probe

    result = o_direct_probe(str(tmp_path))
    assert set(result) == {"o_direct", "o_direct_reason"} and list(tmp_path.iterdir()) == []  # probe file removed
    missing = o_direct_probe(str(tmp_path / "no_such_dir"))
    assert missing["o_direct"] is False and "O_DIRECT on" in missing["o_direct_reason"] and "failed" in missing["o_direct_reason"]
    uring = io_uring_probe()
    assert isinstance(uring["io_uring"], bool) and "io_uring" in uring["io_uring_reason"]


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "report" in capsys.readouterr().err


def test_launch_without_a_script_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        cli.main(["launch"])
    assert info.value.code == 2


def test_a_first_word_that_is_no_subcommand_is_deepspeeds_launcher_form(capsys):
    assert cli.main(["no_such_script.py", "--x"]) == 2  # `zerospeed script.py args` == `zerospeed launch script.py args`
    err = capsys.readouterr().err
    assert "training script 'no_such_script.py' not found" in err and "report" in err
    assert cli.main(["--num_procs", "2", "missing.py"]) == 2
    assert "'missing.py' not found" in capsys.readouterr().err


def test_launcher_flags_parse_like_deepspeed():
    parser = cli.build_parser()
    args = parser.parse_args(["launch", "-H", "hf", "-i", "a:0@b", "--num_gpus", "2", "--master_port", "1234",
                              "--launcher", "OpenMPI", "--bind_cores_to_rank", "--max_restarts", "3", "--no_ssh",
                              "--force_multi", "train.py", "--deepspeed_config", "ds.json", "--num_nodes", "9"])
    assert (args.hostfile, args.include, args.num_procs, args.master_port, args.launcher) == ("hf", "a:0@b", 2, 1234, "openmpi")
    assert args.bind_cores_to_rank and args.max_restarts == 3 and args.no_ssh and args.force_multi
    assert args.num_nodes == -1  # everything after the script belongs to the script
    assert (args.user_script, args.user_args) == ("train.py", ["--deepspeed_config", "ds.json", "--num_nodes", "9"])
    assert parser.parse_args(["launch", "--num_procs", "3", "t.py"]).num_procs == 3
