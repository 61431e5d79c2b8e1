"""The exact command line each launcher backend would run (pure functions returning argv lists)."""

import shlex

import pytest

from zerospeed.errors import ConfigError
from zerospeed.launcher import backends
from zerospeed.launcher.hostfile import decode_world_info, encode_world_info

RESOURCES = {"node-a": [0, 1], "node-b": [0, 1]}
WORLD = encode_world_info(RESOURCES)


def plan(**overrides) -> backends.JobPlan:
    fields = dict(
        resources=RESOURCES, master_addr="10.0.0.1", master_port=29500, user_script="train.py",
        user_args=("--deepspeed_config", "ds config.json"), run_id="job7", python="/py/bin/python", cwd="/work/run",
        exports={"NCCL_DEBUG": "INFO", "PYTHONPATH": "/work/run"},
    )
    fields.update(overrides)
    return backends.JobPlan(**fields)


def agent(node_rank, *flags, script=("train.py", "--deepspeed_config", "ds config.json")):
    return ["/py/bin/python", "-u", "-m", "zerospeed.launcher.launch", f"--world_info={WORLD}", f"--node_rank={node_rank}",
            "--master_addr=10.0.0.1", "--master_port=29500", "--rdzv_id=job7", "--max_restarts=0", *flags, *script]


def test_agent_argv_and_flags():
    assert backends.agent_argv(plan(), 1) == agent(1)
    flagged = plan(max_restarts=3, module=True, no_local_rank=True, bind_cores_to_rank=True, bind_core_list="0-3")
    argv = backends.agent_argv(flagged, 0)
    assert argv[9:15] == ["--max_restarts=3", "--module", "--no_local_rank", "--bind_cores_to_rank", "--bind_core_list=0-3",
                          "train.py"]
    assert decode_world_info(argv[4].split("=", 1)[1]) == RESOURCES


def test_torchrun_equivalent():
    assert backends.torchrun_argv(plan(max_restarts=2), 1) == [
        "/py/bin/python", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "--node_rank=1",
        "--rdzv_backend=c10d", "--rdzv_endpoint=10.0.0.1:29500", "--rdzv_id=job7", "--max_restarts=2",
        "train.py", "--local_rank=${local_rank}", "--deepspeed_config", "ds config.json",
    ]
    assert backends.torchrun_argv(plan(module=True, no_local_rank=True), 0)[-4:] == [
        "--module", "train.py", "--deepspeed_config", "ds config.json"]


def test_pdsh():
    argv, env = backends.pdsh_command(plan(launcher_args=("-R", "ssh"), ssh_port=2222))
    assert argv[:8] == ["pdsh", "-S", "-f", "1024", "-w", "node-a,node-b", "-R", "ssh"]
    assert env == {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS_APPEND": "-p 2222"}
    remote = argv[8]
    assert remote.startswith("cd /work/run && export NCCL_DEBUG=INFO; export PYTHONPATH=/work/run; exec ")
    assert shlex.split(remote.split("exec ", 1)[1]) == agent("%n")  # %n: pdsh's per-host index, left unquoted
    assert "--node_rank=%n" in remote and "'ds config.json'" in remote


def test_ssh_one_command_per_host_with_venv():
    commands = backends.ssh_commands(plan(ssh_port=2200, venv_script="/venv/bin/activate"))
    assert [c[:6] for c in commands] == [["ssh", "-o", "BatchMode=yes", "-p", "2200", "node-a"],
                                          ["ssh", "-o", "BatchMode=yes", "-p", "2200", "node-b"]]
    for rank, command in enumerate(commands):
        assert command[6].startswith("cd /work/run && source /venv/bin/activate; export NCCL_DEBUG=INFO;")
        assert shlex.split(command[6].split("exec ", 1)[1]) == agent(rank)


def test_slurm():
    assert backends.slurm_command(plan(launcher_args=("--partition", "gpu"))) == [
        "srun", "--nodes=2", "--ntasks-per-node=1", "--nodelist=node-a,node-b",
        "--export=ALL,NCCL_DEBUG=INFO,PYTHONPATH=/work/run", "--partition", "gpu", *agent(-1),
    ]
    with pytest.raises(ConfigError, match="contains ',' which srun --export cannot carry"):
        backends.slurm_command(plan(exports={"NCCL_IB_HCA": "mlx5_0,mlx5_1"}))


def test_openmpi():
    assert backends.openmpi_command(plan()) == [
        "mpirun", "-n", "2", "--map-by", "ppr:1:node", "-H", "node-a:1,node-b:1", "--mca", "btl", "^openib",
        "-x", "NCCL_DEBUG=INFO", "-x", "PYTHONPATH=/work/run", *agent(-1),
    ]


def test_mpich():
    assert backends.mpich_command(plan()) == [
        "mpirun", "-n", "2", "-ppn", "1", "-hosts", "node-a,node-b",
        "-genv", "NCCL_DEBUG", "INFO", "-genv", "PYTHONPATH", "/work/run", *agent(-1),
    ]


def test_netns_test_backend():
    assert backends.netns_commands(plan()) == [
        ["ip", "netns", "exec", host, "env", "NCCL_DEBUG=INFO", "PYTHONPATH=/work/run", *agent(rank)]
        for rank, host in enumerate(RESOURCES)
    ]


def test_backend_dispatch():
    for name in ("pdsh", "ssh", "slurm", "openmpi", "mpich", "netns"):
        commands, _ = backends.backend_commands(name, plan())
        assert commands and all(isinstance(arg, str) for c in commands for arg in c)
        assert commands[0][0] == backends.PROGRAMS[name]
    with pytest.raises(ConfigError, match="torchrun runs one node's agent in this process"):
        backends.backend_commands("torchrun", plan())


def test_env_file_and_exports():
    text = "# comment\nNCCL_SOCKET_IFNAME=eth0\nexport HF_HOME = /data/hf\n\nWANDB_MODE=offline\n"
    assert backends.parse_env_file(text, "f") == {"NCCL_SOCKET_IFNAME": "eth0", "HF_HOME": "/data/hf", "WANDB_MODE": "offline"}
    for bad in ("NOEQUALS", "1BAD=x", "=x"):
        with pytest.raises(ConfigError, match=rf"env file /home/u/.zerospeed_env line 2: {bad!r} is not KEY=VALUE"):
            backends.parse_env_file(f"OK=1\n{bad}\n", "/home/u/.zerospeed_env")
    environ = {"NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "eth1", "PYTHONPATH": "/lib", "ZEROSPEED_COMM_TIMEOUT": "9",
               "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "PATH": "/bin", "PYTHONUNBUFFERED": "1"}
    exports = backends.exports_from(environ, {"/h/.deepspeed_env": "A=1\nB=ds", "/w/.zerospeed_env": "B=zs"}, cwd="/w")
    assert exports == {"NCCL_DEBUG": "WARN", "GLOO_SOCKET_IFNAME": "eth1", "PYTHONPATH": "/w:/lib",
                       "ZEROSPEED_COMM_TIMEOUT": "9", "PYTHONUNBUFFERED": "1", "A": "1", "B": "zs"}
