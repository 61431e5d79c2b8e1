"""`zerospeed [launch] script.py ARGS`: DeepSpeed's launcher, on torch's elastic agent.

Two roles in one module:

- the **runner** (`zerospeed ...`, `zerospeed launch ...`): reads the hostfile and the
  `--include/--exclude/--num_nodes/--num_gpus` filters into `{host: [slots]}`. One node:
  it runs torch's elastic agent in this process (`elastic_launch`, no torchrun
  subprocess). Several nodes: it starts one agent per node through `--launcher`
  (backends.py) and waits for them, propagating the environment.
- the **node agent** (`python -m zerospeed.launcher.launch --world_info=... --node_rank=R`):
  what every backend starts on each node; an elastic agent joining the c10d rendezvous at
  MASTER_ADDR:MASTER_PORT that spawns this node's slots as processes.

A failed rank ends the job with one line naming it (rank, node, pid, exit code or
signal); `--max_restarts N` restarts the whole job up to N times (the script resumes from
its last checkpoint; see docs/launcher.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence

from zerospeed.errors import ConfigError
from zerospeed.launcher import backends
from zerospeed.launcher.hostfile import (
    DLTS_HOSTFILE,
    decode_world_info,
    filter_resources,
    limit_resources,
    read_hostfile,
)

HELP = "launch a training script on this machine or on several nodes (DeepSpeed's launcher flags)"
DEFAULT_PORT = 29500
NODE_RANK_VARIABLES = ("SLURM_NODEID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # --node_rank=-1 reads these
AGENT_GRACE_SECONDS = 30.0  # after one node agent fails, how long the others get to notice and stop


# -- arguments --------------------------------------------------------------------------------
def _agent_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the runner and the node agent (forwarded to every node)."""
    parser.add_argument("--master_addr", default="", help="address of node 0 (rendezvous host); default 127.0.0.1 on one node")
    parser.add_argument("--master_port", type=int, default=None,
                        help=f"rendezvous port on node 0 (default: a free port on one node, {DEFAULT_PORT} across nodes)")
    parser.add_argument("--max_restarts", type=int, default=0,
                        help="restart every process of the job up to N times after a failure (the script resumes from its checkpoint)")
    parser.add_argument("--module", action="store_true", help="run the script as a module, like `python -m`")
    parser.add_argument("--no_python", action="store_true", help="run the script directly, without `python`")
    parser.add_argument("--no_local_rank", action="store_true", help="do not pass --local_rank=N to the script")
    parser.add_argument("--bind_cores_to_rank", action="store_true",
                        help="give each process of a node its own equal share of the cores (sets OMP_NUM_THREADS)")
    parser.add_argument("--bind_core_list", default=None, help="cores to share out, e.g. 0-7,16-23 (default: all usable cores)")
    parser.add_argument("--rdzv_id", default=None, help="rendezvous (job) id; default: a fresh one per launch")
    parser.add_argument("--rdzv_timeout", type=float, default=600.0, help="seconds to wait for every node to join")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-H", "--hostfile", default=DLTS_HOSTFILE,
                        help="MPI-style hostfile of `host slots=N` lines (default /job/hostfile; absent: this machine only)")
    parser.add_argument("-i", "--include", default="", help="hosts/slots to use: host1:0,1@host2 (mutually exclusive with --exclude)")
    parser.add_argument("-e", "--exclude", default="", help="hosts/slots not to use, same syntax as --include")
    parser.add_argument("--num_nodes", type=int, default=-1, help="use the first K hosts of the hostfile")
    parser.add_argument("--num_gpus", "--num_accelerators", "--num_procs", dest="num_procs", type=int, default=-1,
                        help="processes per node (GPUs per node; on CPU, slots = processes; default: every device, 1 on CPU)")
    parser.add_argument("--node_rank", type=int, default=-1, help="this node's index with --no_ssh / --launcher torchrun")
    parser.add_argument("--launcher", default="pdsh", type=str.lower, choices=backends.BACKENDS,
                        help="how to start the node agents on several nodes (netns: local network namespaces, for tests)")
    parser.add_argument("--launcher_args", default="", help="extra arguments for the launcher program, as one quoted string")
    parser.add_argument("--no_ssh", action="store_true", help="run only this node's agent (start zerospeed on every node yourself)")
    parser.add_argument("--no_ssh_check", action="store_true", help="accepted for DeepSpeed scripts (no ssh probe is made)")
    parser.add_argument("--force_multi", action="store_true", help="use the multi-node path even for one host")
    parser.add_argument("--ssh_port", type=int, default=None, help="ssh port for pdsh/ssh")
    parser.add_argument("--venv_script", default=None, help="script each node sources before starting (e.g. a venv's activate)")
    for flag in ("--save_pid", "--enable_each_rank_log", "--autotuning", "--log_level", "--elastic_training"):
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)  # DeepSpeed flags accepted and ignored
    parser.add_argument("-q", "--quiet", action="store_true", help=argparse.SUPPRESS)
    _agent_options(parser)
    parser.add_argument("user_script", help="the training script (or module with --module), followed by its arguments")
    parser.add_argument("user_args", nargs=argparse.REMAINDER)


# -- the runner ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """The `zerospeed` launcher: resolve resources, then one in-process agent or one agent per node."""
    try:
        return _run(args)
    except ConfigError as error:
        print(f"zerospeed: error: {error}", file=sys.stderr, flush=True)
        return 2


def resolve_resources(args: argparse.Namespace) -> tuple[dict[str, list[int]], bool]:
    """({host: [slots]}, whether a hostfile described them)."""
    if (args.num_nodes >= 0 or args.num_procs >= 0) and (args.include or args.exclude):
        raise ConfigError("--num_nodes/--num_gpus cannot be combined with --include/--exclude; allowed: one way to choose slots")
    pool = read_hostfile(args.hostfile)
    from_hostfile = pool is not None
    if pool is None:
        if args.num_nodes > 1:
            raise ConfigError(f"--num_nodes {args.num_nodes} needs a hostfile listing the nodes (--hostfile); none at {args.hostfile}")
        pool = {"localhost": args.num_procs if args.num_procs > 0 else _local_device_count()}
    resources = filter_resources(pool, args.include, args.exclude, source=args.hostfile if from_hostfile else "this machine (no hostfile)")
    return limit_resources(resources, args.num_nodes, args.num_procs), from_hostfile


def _run(args: argparse.Namespace) -> int:
    _check_script(args)
    resources, _ = resolve_resources(args)
    local_only = args.no_ssh or args.launcher == "torchrun"
    multi = (args.force_multi or len(resources) > 1) and not local_only
    run_id = args.rdzv_id or f"zerospeed-{uuid.uuid4().hex[:12]}"
    if not multi:
        if len(resources) > 1 and not 0 <= args.node_rank < len(resources):
            raise ConfigError(f"--node_rank {args.node_rank}: with --no_ssh/--launcher torchrun on {len(resources)} nodes, "
                              f"allowed: 0 to {len(resources) - 1} (this node's index in the hostfile)")
        if len(resources) > 1 and not args.master_addr:
            raise ConfigError("--master_addr is required with --no_ssh/--launcher torchrun on several nodes (node 0's address)")
        node_rank = max(args.node_rank, 0) if len(resources) > 1 else 0
        port = args.master_port or (DEFAULT_PORT if len(resources) > 1 else _free_port())
        return run_node_agent(resources, node_rank, args.master_addr or "127.0.0.1", port, run_id, args)
    return _run_multi_node(args, resources, run_id)


def _check_script(args: argparse.Namespace) -> None:
    if args.module or args.no_python or os.path.isfile(args.user_script):
        return
    from zerospeed.launcher.cli import SUBCOMMANDS

    raise ConfigError(f"training script {args.user_script!r} not found; allowed: a Python file (or a module with --module); "
                      f"zerospeed's subcommands are: {', '.join(sorted(SUBCOMMANDS))}")


def _local_device_count() -> int:
    from zerospeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return max(1, accelerator.device_count()) if accelerator.name != "cpu" else 1


def _free_port() -> int:
    from zerospeed.comm.ports import free_port

    return free_port()


def _env_files(cwd: str) -> dict[str, str]:
    """Env files in reading order: home first, then cwd; `.deepspeed_env` then `.zerospeed_env`."""
    found = {}
    for directory in (os.path.expanduser("~"), cwd):
        for name in backends.ENV_FILE_NAMES:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and path not in found:
                with open(path, encoding="utf-8") as handle:
                    found[path] = handle.read()
    return found


def build_plan(args: argparse.Namespace, resources: Mapping[str, list[int]], run_id: str,
               environ: Mapping[str, str] | None = None, cwd: str | None = None) -> backends.JobPlan:
    import shlex

    environ = os.environ if environ is None else environ
    cwd = os.path.abspath(cwd or os.getcwd())
    if not args.master_addr and args.launcher == "netns":
        raise ConfigError("--launcher netns needs --master_addr (node 0's address inside its namespace)")
    return backends.JobPlan(
        resources=dict(resources), master_addr=args.master_addr or next(iter(resources)),
        master_port=args.master_port or DEFAULT_PORT, user_script=args.user_script, user_args=tuple(args.user_args),
        run_id=run_id, python=sys.executable, cwd=cwd, exports=backends.exports_from(environ, _env_files(cwd), cwd),
        max_restarts=args.max_restarts, module=args.module, no_python=args.no_python, no_local_rank=args.no_local_rank,
        bind_cores_to_rank=args.bind_cores_to_rank, bind_core_list=args.bind_core_list,
        launcher_args=tuple(shlex.split(args.launcher_args)), ssh_port=args.ssh_port, venv_script=args.venv_script,
    )


def _run_multi_node(args: argparse.Namespace, resources: dict[str, list[int]], run_id: str) -> int:
    plan = build_plan(args, resources, run_id)
    commands, extra_env = backends.backend_commands(args.launcher, plan)
    program = backends.PROGRAMS[args.launcher]
    if shutil.which(program) is None:
        raise ConfigError(f"--launcher {args.launcher} needs `{program}`, which is not on PATH; "
                          f"allowed: one of {', '.join(backends.BACKENDS)} whose program is installed")
    print(f"zerospeed: {len(resources)} nodes ({', '.join(resources)}), {sum(map(len, resources.values()))} processes, "
          f"rendezvous {plan.master_addr}:{plan.master_port}, launcher {args.launcher}", file=sys.stderr, flush=True)
    env = {**os.environ, **extra_env}
    procs = [subprocess.Popen(argv, env=env, cwd=plan.cwd) for argv in commands]
    return _wait_for_nodes(procs, plan.hosts if len(procs) == len(plan.hosts) else [args.launcher])


def _wait_for_nodes(procs: list[subprocess.Popen], names: Sequence[str]) -> int:
    """Wait for every node command; after the first failure give the rest a grace period, then stop them."""
    failed_at: float | None = None
    first_failure: tuple[str, int] | None = None
    try:
        while any(p.poll() is None for p in procs):
            for name, proc in zip(names, procs):
                code = proc.poll()
                if code not in (None, 0) and first_failure is None:
                    first_failure, failed_at = (name, code), time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > AGENT_GRACE_SECONDS:
                for proc in procs:
                    if proc.poll() is None:
                        proc.terminate()
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if first_failure is None:
        first_failure = next(((n, p.returncode) for n, p in zip(names, procs) if p.returncode != 0), None)
    if first_failure is None:
        return 0
    name, code = first_failure
    print(f"zerospeed: job failed: the node agent for {name} exited with code {code} first; "
          "see its 'zerospeed: rank ... failed' line above", file=sys.stderr, flush=True)
    return code if code > 0 else 1


# -- the node agent --------------------------------------------------------------------------
def run_node_agent(resources: Mapping[str, list[int]], node_rank: int, master_addr: str, master_port: int,
                   run_id: str, options: argparse.Namespace) -> int:
    """Run torch's elastic agent for node `node_rank` in this process; return the job's exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    hosts = list(resources)
    host, slots = hosts[node_rank], resources[hosts[node_rank]]
    nnodes, nproc = len(hosts), len(slots)
    _prepare_worker_environment(slots, nproc, options)
    local_addr = master_addr if nnodes == 1 else _address_towards(master_addr, master_port)
    config = LaunchConfig(
        min_nodes=nnodes, max_nodes=nnodes, nproc_per_node=nproc, run_id=run_id,
        rdzv_backend="c10d", rdzv_endpoint=f"{master_addr}:{master_port}",
        rdzv_configs={"is_host": node_rank == 0, "join_timeout": options.rdzv_timeout},
        max_restarts=options.max_restarts, monitor_interval=0.1, start_method="spawn", local_addr=local_addr,
    )
    entrypoint, worker_args = worker_command(options)
    try:
        elastic_launch(config, entrypoint)(*worker_args)
    except ChildFailedError as error:
        print(failure_line(error, node_rank, host, nnodes, options.max_restarts), file=sys.stderr, flush=True)
        _, first = root_failure(error.failures)
        return first.exitcode if first.exitcode > 0 else 1
    except RendezvousError as error:
        print(f"zerospeed: node {node_rank} ({host}): rendezvous at {master_addr}:{master_port} failed: "
              f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}", file=sys.stderr, flush=True)
        return 1
    return 0


def worker_command(options: argparse.Namespace) -> tuple[str, list[str]]:
    """(entrypoint, args) of each process; `${local_rank}` is replaced by torch's agent per process."""
    local_rank = [] if options.no_local_rank else ["--local_rank=${local_rank}"]
    if options.no_python:
        entrypoint, args = options.user_script, [*local_rank, *options.user_args]
    else:
        target = ["-m", options.user_script] if options.module else [options.user_script]
        entrypoint, args = sys.executable, ["-u", *target, *local_rank, *options.user_args]
    if options.bind_cores_to_rank:
        # A tiny bootstrap pins this process to its cores, then execs the real command (same pid).
        args = ["-u", "-m", __name__, "--exec_bound", options.bind_core_list or "", entrypoint, *args]
        entrypoint = sys.executable
    return entrypoint, args


def _prepare_worker_environment(slots: list[int], nproc: int, options: argparse.Namespace) -> None:
    """Variables the spawned processes inherit: visible devices, thread count."""
    from zerospeed.accelerator import accelerator_choice

    try:
        name, _ = accelerator_choice()
    except ConfigError:
        name = "cpu"
    if name == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))
    # torch 2.13's agent shares its rendezvous TCPStore with the workers and does not prefix
    # keys by restart attempt, so a restarted job reads the dead attempt's gloo addresses and
    # cannot connect. Without sharing, each attempt's rank 0 hosts a fresh store.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if nproc > 1 and "OMP_NUM_THREADS" not in os.environ and not options.bind_cores_to_rank:
        os.environ["OMP_NUM_THREADS"] = "1"  # torchrun's default: N processes must not each use every core


def _address_towards(host: str, port: int) -> str:
    """This node's address on the route to `host` (what the other nodes can reach us at)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host, port))  # UDP: picks a route, sends nothing
            return probe.getsockname()[0]
        except OSError:
            return socket.getfqdn()


def _message_text(failure) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message or "")


def root_failure(failures: Mapping[int, object]) -> tuple[int, object]:
    """The failure that most likely caused the others.

    Order: a rank killed by a signal other than the agent's SIGTERM; a rank that failed any
    other way than a comm error; a comm error (a peer's death shows up as one); one
    stopped by SIGTERM. Ties: the earliest, then the lowest rank.
    """
    def key(rank: int):
        failure = failures[rank]
        if failure.exitcode < 0:
            kind = 3 if -failure.exitcode == signal.SIGTERM else 0
        else:
            kind = 2 if _message_text(failure).startswith("CommError") else 1
        return (kind, failure.timestamp, rank)

    rank = min(failures, key=key)
    return rank, failures[rank]


def failure_line(error, node_rank: int, host: str, nnodes: int, max_restarts: int) -> str:
    """One line naming the first failed rank, where it ran and how it ended."""
    rank, failure = root_failure(error.failures)
    if failure.exitcode < 0:
        how = f"was killed by signal {-failure.exitcode} ({failure.signal_name()})"
    else:
        how = f"exited with code {failure.exitcode}"
    message = _message_text(failure).strip()
    cause = ""
    if message and not message.startswith(("Signal ", "To enable traceback")):
        first = message.splitlines()[0]
        cause = f": {first[:300]}{'...' if len(first) > 300 else ''}"
    others = sorted(r for r in error.failures if r != rank)
    also = f"; ranks {others} failed too" if others else ""
    restarts = f" after {max_restarts} restart(s)" if max_restarts else ""
    where = f"node {node_rank} ({host})" if nnodes > 1 else host
    return (f"zerospeed: rank {rank} failed{restarts}: local rank {failure.local_rank} on {where}, pid {failure.pid}, "
            f"{how}{cause}{also}; the job stops")


def _exec_bound(argv: list[str]) -> None:
    """`--exec_bound CORES ENTRYPOINT ARGS...`: pin to this local rank's cores and exec the command."""
    core_list, entrypoint, rest = argv[0], argv[1], argv[2:]
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = parse_core_list(core_list) if core_list else sorted(os.sched_getaffinity(0))
    mine = cores_for_rank(cores, local_rank, local_size)
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))
    os.execv(entrypoint, [entrypoint, *rest])


def parse_core_list(text: str) -> list[int]:
    """`0-3,8,10-11` -> [0, 1, 2, 3, 8, 10, 11] (DeepSpeed's --bind_core_list syntax)."""
    cores: list[int] = []
    for piece in text.split(","):
        low, dash, high = piece.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f"--bind_core_list {text!r}: {piece!r} is not N or N-M; allowed: e.g. 0-3,8,10-11")
        cores.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    return sorted(set(cores))


def cores_for_rank(cores: list[int], local_rank: int, local_size: int) -> list[int]:
    """Local rank r's equal, contiguous share of `cores` (remainder cores stay unused, as in DeepSpeed)."""
    per_rank = len(cores) // local_size
    if per_rank < 1:
        raise ConfigError(f"--bind_cores_to_rank: {len(cores)} core(s) for {local_size} processes; allowed: at least one core each")
    return cores[local_rank * per_rank:(local_rank + 1) * per_rank]


def _agent_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m zerospeed.launcher.launch",
                                     description="zerospeed node agent: this node's part of a multi-node job")
    parser.add_argument("--world_info", required=True, help="base64 JSON {host: [slots]} from the runner")
    parser.add_argument("--node_rank", type=int, default=-1,
                        help=f"this node's index; -1 reads {', '.join(NODE_RANK_VARIABLES)}")
    _agent_options(parser)
    parser.add_argument("user_script")
    parser.add_argument("user_args", nargs=argparse.REMAINDER)
    return parser


def node_rank_from_environment(environ: Mapping[str, str]) -> int:
    for name in NODE_RANK_VARIABLES:
        if environ.get(name, "").isdigit():
            return int(environ[name])
    raise ConfigError(f"--node_rank=-1 but none of {', '.join(NODE_RANK_VARIABLES)} is set; allowed: --node_rank=N")


def agent_main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--exec_bound"]:
        _exec_bound(argv[1:])
    args = _agent_parser().parse_args(argv)
    try:
        resources = decode_world_info(args.world_info)
        node_rank = args.node_rank if args.node_rank >= 0 else node_rank_from_environment(os.environ)
        if not 0 <= node_rank < len(resources):
            raise ConfigError(f"--node_rank {node_rank} outside the {len(resources)} nodes of --world_info")
        return run_node_agent(resources, node_rank, args.master_addr or "127.0.0.1", args.master_port or DEFAULT_PORT,
                              args.rdzv_id or "zerospeed", args)
    except ConfigError as error:
        print(f"zerospeed: node agent: error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    raise SystemExit(agent_main())
