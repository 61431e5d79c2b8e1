"""A real two-node job on this machine: two network namespaces joined by a veth pair.

Each namespace is one "node" with its own network stack (10.231.0.1 and 10.231.0.2 on a
private /30 that exists only inside the namespaces this test creates). The launcher's
multi-node path starts one torch elastic agent per node through the `netns` test backend
(`ip netns exec NODE ...` instead of ssh), the agents meet in a c10d rendezvous on node 0,
and a 2-node ZeRO-2 job (1 process per node, gloo over the veth pair) must give the same
losses and parameters as the same job launched on one node. Needs root and iproute2;
namespaces are removed in a finally block even when the job fails.

Run as a script (`python tests/distributed/test_launcher_multinode.py --out F`) this file
is the training job itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUBNET = ("10.231.0.1", "10.231.0.2")  # a private /30, only ever configured inside our namespaces
IFNAME = "zseth"  # the veth end's name inside each namespace (GLOO_SOCKET_IFNAME)
STEPS = 3


def _train(out: str) -> None:
    """The job: TinyLM, ZeRO-2, 2 ranks in all; rank 0 writes losses and final parameters."""
    sys.path.insert(0, str(REPO))
    from tests.distributed.parity import zerospeed_run
    from zerospeed import comm

    extra = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 300}}
    losses, params, facts = zerospeed_run(STEPS, micro=2, gas=1, lr=3e-3, clip=0.5, two_groups=False, extra=extra)
    if comm.get_rank() == 0:
        Path(out).write_text(json.dumps({
            "world": comm.get_world_size(), "losses": losses,
            "params": {name: value.flatten().tolist() for name, value in params.items()},
            "master_addr": os.environ.get("MASTER_ADDR"),
        }))


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"zsprobe{os.getpid()}"
    try:
        _sh("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as error:
        return f"`ip netns add` failed here: {getattr(error, 'stderr', error)}"
    _sh("ip", "netns", "del", probe)
    return None


class TwoNamespaces:
    """Two namespaces joined by a veth pair; `with` removes them whatever happens."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.names = (f"zsnode0-{tag}", f"zsnode1-{tag}")
        self.veth = (f"zsv{tag}a", f"zsv{tag}b")

    def __enter__(self) -> "TwoNamespaces":
        try:
            for name in self.names:
                _sh("ip", "netns", "add", name)
            _sh("ip", "link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
            for name, veth, addr in zip(self.names, self.veth, SUBNET):
                _sh("ip", "link", "set", veth, "netns", name)
                _sh("ip", "-n", name, "link", "set", veth, "name", IFNAME)
                _sh("ip", "-n", name, "addr", "add", f"{addr}/30", "dev", IFNAME)
                _sh("ip", "-n", name, "link", "set", IFNAME, "up")
                _sh("ip", "-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth[0]], capture_output=True, timeout=30)  # if never moved


def _launch(args: list[str], cwd: Path, env_extra: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    # one thread per process everywhere, so both layouts sum in the same order (bitwise-equal results)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}", "ZEROSPEED_COMM_TIMEOUT": "60", "OMP_NUM_THREADS": "1",
           **env_extra}
    return subprocess.run([sys.executable, "-m", "zerospeed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_two_namespace_nodes_match_one_node(tmp_path):
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    script = str(Path(__file__).resolve())
    single = _launch(["--num_procs", "2", script, "--out", str(tmp_path / "one.json")], tmp_path, {})
    assert single.returncode == 0, single.stderr[-4000:]
    with TwoNamespaces() as nodes:
        hostfile = tmp_path / "hostfile"
        hostfile.write_text(f"# one 'host' per network namespace\n{nodes.names[0]} slots=1\n{nodes.names[1]} slots=1\n")
        started = time.monotonic()
        multi = _launch(["--hostfile", str(hostfile), "--launcher", "netns", "--master_addr", SUBNET[0],
                         "--master_port", "29531", "--rdzv_timeout", "120", script, "--out", str(tmp_path / "two.json")],
                        tmp_path, {"GLOO_SOCKET_IFNAME": IFNAME})
        elapsed = time.monotonic() - started
    assert multi.returncode == 0, multi.stderr[-6000:]
    assert "2 nodes" in multi.stderr and "launcher netns" in multi.stderr
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["world"] == two["world"] == 2
    assert two["master_addr"] == SUBNET[0]  # the workers' process group really met on node 0's veth address
    # Same ranks, same data, one thread each: the two layouts must agree bit for bit.
    assert two["losses"] == one["losses"]
    assert two["params"] == one["params"]
    print(f"2-node netns job: {elapsed:.1f}s; losses {two['losses']}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    _train(parser.parse_args().out)
