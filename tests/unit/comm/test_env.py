"""Launch-environment detection (torchrun, MPI, Slurm) and Slurm nodelist expansion: pure, no processes."""

import pytest

from zerospeed.comm.env import detect_launch_env, parse_nodelist
from zerospeed.errors import ConfigError


def test_alone_is_none():
    assert detect_launch_env(environ={}) is None
    assert detect_launch_env(environ={"RANK": "0"}) is None  # half a torchrun env is no env


def test_torchrun_variables():
    env = detect_launch_env(environ={
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234",
    })
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == (
        3, 8, 1, "10.0.0.1", "1234", "torchrun"
    )


def test_torchrun_wins_over_slurm_and_defaults_fill_in():
    env = detect_launch_env(1111, environ={"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "5", "SLURM_NTASKS": "9"})
    assert (env.source, env.rank, env.local_rank, env.master_addr, env.master_port) == (
        "torchrun", 0, 0, "127.0.0.1", "1111"
    )


def test_open_mpi_variables():
    env = detect_launch_env(29500, environ={
        "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "6", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
        "MASTER_ADDR": "head",
    })
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.source) == (
        5, 6, 2, "head", "29500", "mpi"
    )


def test_mpich_pmi_variables():
    env = detect_launch_env(environ={"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (1, 2, 1, "mpi")


def test_slurm_master_is_first_host_of_the_nodelist():
    env = detect_launch_env(environ={
        "SLURM_PROCID": "7", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-10],cpu1", "SLURM_LAUNCH_NODE_IPADDR": "10.1.1.1",
    })
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.source) == (7, 16, 3, "gpu07", "slurm")


def test_slurm_falls_back_to_launch_node_address_then_master_addr_wins():
    base = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LAUNCH_NODE_IPADDR": "10.1.1.1"}
    assert detect_launch_env(environ=base).master_addr == "10.1.1.1"
    assert detect_launch_env(environ={**base, "SLURM_JOB_NODELIST": "a,b", "MASTER_ADDR": "x"}).master_addr == "x"


def test_bad_values_name_the_variable():
    with pytest.raises(ConfigError, match="RANK='two'"):
        detect_launch_env(environ={"RANK": "two", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="rank 4 outside world size 4"):
        detect_launch_env(environ={"SLURM_PROCID": "4", "SLURM_NTASKS": "4"})
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_SIZE is missing"):
        detect_launch_env(environ={"OMPI_COMM_WORLD_RANK": "0"})


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node01", ["node01"]),
        ("a,b", ["a", "b"]),
        ("node[01-04]", ["node01", "node02", "node03", "node04"]),
        ("node[1,3-4]", ["node1", "node3", "node4"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("gpu[1-2],cpu[5],login", ["gpu1", "gpu2", "cpu5", "login"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("host-a.example.com,host-b", ["host-a.example.com", "host-b"]),
        (" a , b ", ["a", "b"]),
    ],
)
def test_parse_nodelist(nodelist, hosts):
    assert parse_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["node[1-", "node[4-2]", "node[a-c]"])
def test_parse_nodelist_rejects_malformed(nodelist):
    with pytest.raises(ConfigError, match="nodelist"):
        parse_nodelist(nodelist)
