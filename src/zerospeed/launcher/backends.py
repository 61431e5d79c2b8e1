"""The command lines that start one node agent per node: torchrun, pdsh, ssh, slurm, openmpi, mpich, netns.

Pure functions of a `JobPlan`, returning argv lists (never shell strings run locally), so
each backend's exact command is unit-tested. Every backend starts the same thing on each
node: `python -u -m zerospeed.launcher.launch --world_info=... --node_rank=R ...`, a torch
elastic agent that joins a c10d rendezvous at MASTER_ADDR:MASTER_PORT and spawns that
node's processes. MPI and Slurm start one agent per node (`--node_rank=-1`: the agent
reads its node rank from SLURM_NODEID, OMPI_COMM_WORLD_RANK or PMI_RANK).

`netns` is a test backend: each hostfile "host" is a Linux network namespace on this
machine, entered with `ip netns exec HOST`; it lets a real multi-node job (separate
network stacks joined by a veth pair) run without an ssh daemon.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Mapping

from zerospeed.errors import ConfigError
from zerospeed.launcher.hostfile import encode_world_info

BACKENDS = ("pdsh", "ssh", "slurm", "openmpi", "mpich", "netns", "torchrun")
# the program each backend runs on the launching machine
PROGRAMS = {"pdsh": "pdsh", "ssh": "ssh", "slurm": "srun", "openmpi": "mpirun", "mpich": "mpirun", "netns": "ip"}
# variables copied from the launching environment to every node (prefix match)
EXPORT_PREFIXES = ("NCCL_", "GLOO_", "PYTHON", "ZEROSPEED_", "DEEPSPEED_", "TORCH_", "UCX_", "MLFLOW", "MV2_", "OMP_NUM_THREADS")
ENV_FILE_NAMES = (".deepspeed_env", ".zerospeed_env")  # read in this order; later files win
PDSH_MAX_FAN_OUT = 1024
AGENT_MODULE = "zerospeed.launcher.launch"


@dataclass(frozen=True)
class JobPlan:
    """Everything a node agent needs, decided once on the launching machine."""

    resources: Mapping[str, list[int]]  # {host: [slots]} in node-rank order
    master_addr: str
    master_port: int
    user_script: str
    user_args: tuple[str, ...] = ()
    run_id: str = "zerospeed"
    python: str = sys.executable
    cwd: str = "."
    exports: Mapping[str, str] = field(default_factory=dict)
    max_restarts: int = 0
    module: bool = False
    no_python: bool = False
    no_local_rank: bool = False
    bind_cores_to_rank: bool = False
    bind_core_list: str | None = None
    launcher_args: tuple[str, ...] = ()
    ssh_port: int | None = None
    venv_script: str | None = None

    @property
    def hosts(self) -> list[str]:
        return list(self.resources)

    @property
    def world_info(self) -> str:
        return encode_world_info(self.resources)


def agent_argv(plan: JobPlan, node_rank: int | str) -> list[str]:
    """The node agent's command: our in-process torch elastic agent for node `node_rank`."""
    argv = [
        plan.python, "-u", "-m", AGENT_MODULE,
        f"--world_info={plan.world_info}", f"--node_rank={node_rank}",
        f"--master_addr={plan.master_addr}", f"--master_port={plan.master_port}",
        f"--rdzv_id={plan.run_id}", f"--max_restarts={plan.max_restarts}",
    ]
    for flag in ("module", "no_python", "no_local_rank", "bind_cores_to_rank"):
        if getattr(plan, flag):
            argv.append(f"--{flag}")
    if plan.bind_core_list:
        argv.append(f"--bind_core_list={plan.bind_core_list}")
    return argv + [plan.user_script, *plan.user_args]


def torchrun_argv(plan: JobPlan, node_rank: int) -> list[str]:
    """The `torchrun` command equivalent to node `node_rank`'s agent (what `--launcher torchrun` runs in-process)."""
    nproc = len(plan.resources[plan.hosts[node_rank]])
    argv = [
        plan.python, "-m", "torch.distributed.run",
        f"--nnodes={len(plan.resources)}", f"--nproc_per_node={nproc}", f"--node_rank={node_rank}",
        "--rdzv_backend=c10d", f"--rdzv_endpoint={plan.master_addr}:{plan.master_port}",
        f"--rdzv_id={plan.run_id}", f"--max_restarts={plan.max_restarts}",
    ]
    if plan.no_python:
        argv.append("--no-python")
    elif plan.module:
        argv.append("--module")
    local_rank = [] if plan.no_local_rank else ["--local_rank=${local_rank}"]
    return argv + [plan.user_script, *local_rank, *plan.user_args]


def remote_shell_command(plan: JobPlan, node_rank: int | str) -> str:
    """One shell line for a remote node: cd, optional venv, exports, then the agent."""
    parts = [f"cd {shlex.quote(plan.cwd)}"]
    if plan.venv_script:
        parts.append(f"source {shlex.quote(plan.venv_script)}")
    parts += [f"export {key}={shlex.quote(value)}" for key, value in plan.exports.items()]
    parts.append("exec " + " ".join(shlex.quote(arg) for arg in agent_argv(plan, node_rank)))
    return "; ".join(parts[:1]) + " && " + "; ".join(parts[1:])


def pdsh_command(plan: JobPlan) -> tuple[list[str], dict[str, str]]:
    """`pdsh` over every host at once (`%n` is pdsh's per-host index) and the env pdsh needs."""
    env = {"PDSH_RCMD_TYPE": "ssh"}
    if plan.ssh_port is not None:
        env["PDSH_SSH_ARGS_APPEND"] = f"-p {plan.ssh_port}"
    argv = ["pdsh", "-S", "-f", str(PDSH_MAX_FAN_OUT), "-w", ",".join(plan.hosts), *plan.launcher_args,
            remote_shell_command(plan, "%n")]
    return argv, env


def ssh_commands(plan: JobPlan) -> list[list[str]]:
    """One `ssh` per host, each with its node rank."""
    port = ["-p", str(plan.ssh_port)] if plan.ssh_port is not None else []
    return [
        ["ssh", "-o", "BatchMode=yes", *port, *plan.launcher_args, host, remote_shell_command(plan, rank)]
        for rank, host in enumerate(plan.hosts)
    ]


def slurm_command(plan: JobPlan) -> list[str]:
    """`srun` with one task (one agent) per node; the agent reads SLURM_NODEID."""
    for key, value in plan.exports.items():
        if "," in value:
            raise ConfigError(f"environment variable {key}={value!r} contains ',' which srun --export cannot carry; "
                              "allowed: values without commas (set it in the job script instead)")
    export = ",".join(["ALL", *(f"{key}={value}" for key, value in plan.exports.items())])
    return [
        "srun", f"--nodes={len(plan.hosts)}", "--ntasks-per-node=1", f"--nodelist={','.join(plan.hosts)}",
        f"--export={export}", *plan.launcher_args, *agent_argv(plan, -1),
    ]


def openmpi_command(plan: JobPlan) -> list[str]:
    """Open MPI's `mpirun`, one process (one agent) per host; the agent reads OMPI_COMM_WORLD_RANK."""
    exports = [item for key, value in plan.exports.items() for item in ("-x", f"{key}={value}")]
    return [
        "mpirun", "-n", str(len(plan.hosts)), "--map-by", "ppr:1:node", "-H", ",".join(f"{h}:1" for h in plan.hosts),
        "--mca", "btl", "^openib", *plan.launcher_args, *exports, *agent_argv(plan, -1),
    ]


def mpich_command(plan: JobPlan) -> list[str]:
    """MPICH's `mpirun` (Hydra), one process per host; the agent reads PMI_RANK."""
    exports = [item for key, value in plan.exports.items() for item in ("-genv", key, value)]
    return [
        "mpirun", "-n", str(len(plan.hosts)), "-ppn", "1", "-hosts", ",".join(plan.hosts),
        *plan.launcher_args, *exports, *agent_argv(plan, -1),
    ]


def netns_commands(plan: JobPlan) -> list[list[str]]:
    """Test backend: one agent per network namespace named like the host, via `ip netns exec`."""
    exports = [f"{key}={value}" for key, value in plan.exports.items()]
    return [["ip", "netns", "exec", host, "env", *exports, *agent_argv(plan, rank)] for rank, host in enumerate(plan.hosts)]


def backend_commands(backend: str, plan: JobPlan) -> tuple[list[list[str]], dict[str, str]]:
    """(commands to start on the launching machine, extra environment for them) for `backend`."""
    if backend == "pdsh":
        argv, env = pdsh_command(plan)
        return [argv], env
    if backend == "ssh":
        return ssh_commands(plan), {}
    if backend == "slurm":
        return [slurm_command(plan)], {}
    if backend == "openmpi":
        return [openmpi_command(plan)], {}
    if backend == "mpich":
        return [mpich_command(plan)], {}
    if backend == "netns":
        return netns_commands(plan), {}
    raise ConfigError(f"--launcher {backend!r} cannot start remote nodes; allowed: {', '.join(b for b in BACKENDS if b != 'torchrun')} "
                      "(torchrun runs one node's agent in this process: use it with --node_rank on each node)")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """`KEY=VALUE` lines of a `.zerospeed_env` / `.deepspeed_env` file (blank lines and # comments skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].strip()
        key, sep, value = line.partition("=")
        if not sep or not _ENV_NAME.match(key.strip()):
            raise ConfigError(f"env file {source} line {number}: {raw.strip()!r} is not KEY=VALUE; "
                              "allowed: KEY=VALUE lines (KEY a shell variable name), blank lines, # comments")
        values[key.strip()] = value.strip()
    return values


def exports_from(environ: Mapping[str, str], env_files: Mapping[str, str] = {}, cwd: str = ".") -> dict[str, str]:  # noqa: B006
    """Variables every node gets: matching prefixes from `environ`, then the env files' contents.

    `env_files` maps a file path to its text, in reading order. PYTHONPATH gets `cwd` first,
    as DeepSpeed's runner does, so the user's script imports its neighbours on every node.
    """
    exports = {key: value for key, value in environ.items() if key.startswith(EXPORT_PREFIXES)}
    pythonpath = environ.get("PYTHONPATH")
    exports["PYTHONPATH"] = f"{cwd}:{pythonpath}" if pythonpath else cwd
    for path, text in env_files.items():
        exports.update(parse_env_file(text, path))
    return exports
