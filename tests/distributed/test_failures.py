"""Failure behaviour of a job started with `zerospeed`: a dead rank stops the job with one line naming it.

- a rank killed by SIGKILL mid-training: the job exits non-zero well within the comm
  timeout, and one `zerospeed: rank 1 failed ...` line names the rank, its pid and the signal;
- a rank raising a Python exception: same, with its exit code;
- `--max_restarts 1`: the first attempt fails, the agent restarts every process, the second
  attempt finishes (the script writes a marker file per attempt where a real one would
  `engine.load_checkpoint`).

Run as a script, this file is the worker; `--mode` picks the behaviour.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMM_TIMEOUT = 30  # seconds: a hang would show up as a run this long


def _worker(mode: str, marker: str) -> None:
    import torch

    import zerospeed
    from zerospeed import comm

    zerospeed.init_distributed(dist_backend="gloo")
    rank = comm.get_rank()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if rank == 0:
        with open(marker, "a") as handle:
            handle.write(f"attempt {attempt}\n")
    value = torch.ones(8)
    for step in range(50):
        comm.set_step(step)
        comm.all_reduce(value)
        if step == 3 and rank == 1:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "raise" or (mode == "restart" and attempt == 0):
                raise ValueError(f"bad batch at step {step}")
    comm.barrier()


def _launch(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "ZEROSPEED_COMM_TIMEOUT": str(COMM_TIMEOUT)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "zerospeed", "--num_procs", "2", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=5 * COMM_TIMEOUT)
    return done, time.monotonic() - started


def _summary_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("zerospeed: rank ")]


def test_killed_rank_ends_the_job_with_a_line_naming_it(tmp_path):
    done, elapsed = _launch(__file__, "--mode", "kill", "--marker", str(tmp_path / "m"), cwd=tmp_path)
    assert done.returncode != 0
    assert elapsed < COMM_TIMEOUT, f"took {elapsed:.1f}s: the job waited for a timeout instead of noticing the death"
    lines = _summary_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]
    assert re.fullmatch(r"zerospeed: rank 1 failed: local rank 1 on localhost, pid \d+, was killed by signal 9 \(SIGKILL\)"
                        r"(; ranks \[0\] failed too)?; the job stops", lines[0]), lines[0]


def test_rank_raising_an_exception_is_named_with_its_exit_code(tmp_path):
    done, elapsed = _launch(__file__, "--mode", "raise", "--marker", str(tmp_path / "m"), cwd=tmp_path)
    assert done.returncode == 1 and elapsed < COMM_TIMEOUT
    lines = _summary_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("zerospeed: rank 1 failed: local rank 1 on localhost"), done.stderr[-3000:]
    assert "exited with code 1: ValueError: bad batch at step 3" in lines[0]  # from the worker's elastic error file


def test_max_restarts_restarts_the_whole_job(tmp_path):
    marker = tmp_path / "attempts"
    done, _ = _launch("--max_restarts", "1", __file__, "--mode", "restart", "--marker", str(marker), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text().splitlines() == ["attempt 0", "attempt 1"]
    assert _summary_lines(done.stderr) == []


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["kill", "raise", "restart"], required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    options = parser.parse_args()
    _worker(options.mode, options.marker)
