"""The `zerospeed` console script: --version, report, report --json (run as a subprocess)."""

import json
import shutil
import subprocess
import sys

import pytest

import zerospeed
from zerospeed.launcher import cli

REPORT_KEYS = {"python", "platform", "torch", "zerospeed", "accelerator", "comm_backends", "cpu",
               "optional_packages", "ops"}


def _script() -> list[str]:
    path = shutil.which("zerospeed")
    return [path] if path else [sys.executable, "-m", "zerospeed"]


def _run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

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
    assert set(report["comm_backends"]) == {"gloo", "nccl", "mpi"}
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
                  "comm backend gloo", "bf16 supported", "CPU cores", "RAM", "pydantic", "deepspeed", "ops"):
        assert label in rows, label
    value_columns = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in rows.values()}
    assert len(value_columns) == 1  # every value starts in the same column
    assert "ZEROSPEED_ACCELERATOR=cpu in the environment" in rows["chosen because"]
    assert "no build step needed" in rows["ops"]


def test_report_survives_a_bad_accelerator_setting():
    done = _run("report", "--json", env_extra={"ZEROSPEED_ACCELERATOR": "bogus"})
    assert done.returncode == 0, done.stderr
    accelerator = json.loads(done.stdout)["accelerator"]
    assert accelerator["name"] is None and "'bogus'" in accelerator["reason"]


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "report" in capsys.readouterr().err


def test_unknown_command_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        cli.main(["launch"])
    assert info.value.code == 2
