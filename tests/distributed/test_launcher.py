"""`zerospeed script.py` on one node: torch's elastic agent in the launcher's own process.

One launch of 2 processes checks what each process sees: rank, world, LOCAL_RANK and
DeepSpeed's `--local_rank=N` argument, the script's own arguments untouched, a working
gloo process group, and with --bind_cores_to_rank its own core and OMP_NUM_THREADS.
Run as a script, this file is that worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _worker(out_dir: str, local_rank_arg: int, rest: list[str]) -> None:
    import torch

    import zerospeed
    from zerospeed import comm

    zerospeed.init_distributed(dist_backend="gloo")
    value = torch.tensor([float(comm.get_rank() + 1)])
    comm.all_reduce(value)
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps({
        "rank": comm.get_rank(), "world": comm.get_world_size(), "local_rank_env": int(os.environ["LOCAL_RANK"]),
        "local_rank_arg": local_rank_arg, "rest": rest, "sum": value.item(),
        "affinity": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS"),
        "pid_is_worker": os.environ.get("TORCHELASTIC_RUN_ID") is not None,
    }))


def _launch(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "zerospeed", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_two_local_processes_see_deepspeeds_environment(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    done = _launch("--num_procs", "2", "--bind_cores_to_rank", str(Path(__file__).resolve()), "--out", str(tmp_path),
                   "--keep", "me", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    share = len(cores) // 2
    for rank, result in enumerate(results):
        assert (result["rank"], result["world"], result["sum"]) == (rank, 2, 3.0)
        assert result["local_rank_env"] == result["local_rank_arg"] == rank
        assert result["rest"] == ["--keep", "me"]
        assert result["pid_is_worker"]
        if share:
            assert result["affinity"] == cores[rank * share:(rank + 1) * share]
            assert result["omp"] == str(share)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    known, rest = parser.parse_known_args()
    _worker(known.out, known.local_rank, rest)
