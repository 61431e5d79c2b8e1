"""Hostfile, --include/--exclude and --num_nodes/--num_gpus parsing: every valid form and every kind of bad line."""

import os

import pytest

from zerospeed.errors import ConfigError
from zerospeed.launcher.hostfile import (
    decode_world_info,
    encode_world_info,
    filter_resources,
    limit_resources,
    parse_hostfile_text,
    parse_node_specs,
    read_hostfile,
)

HOSTFILE = """
# the cluster
worker-0 slots=4
worker-1   slots=2   # trailing comment

10.0.0.7 slots=1
node_b.example.com slots = 8
"""


def test_valid_hostfile_keeps_order_comments_and_spacing():
    pool = parse_hostfile_text(HOSTFILE, "hf")
    assert list(pool.items()) == [("worker-0", 4), ("worker-1", 2), ("10.0.0.7", 1), ("node_b.example.com", 8)]


@pytest.mark.parametrize("line, fragment", [
    ("worker-0", "is not a valid entry"),
    ("worker-0 slots=", "is not a valid entry"),
    ("worker-0 slots=two", "is not a valid entry"),
    ("worker-0 slot=2", "is not a valid entry"),
    ("worker-0 slots=2 max_slots=4", "is not a valid entry"),
    ("worker 0 slots=2", "is not a valid entry"),
    ("slots=2", "is not a valid entry"),
])
def test_bad_line_names_file_line_text_and_syntax(line, fragment):
    with pytest.raises(ConfigError) as info:
        parse_hostfile_text(f"ok slots=1\n\n{line}\n", "/etc/hosts.zs")
    text = str(info.value)
    assert f"hostfile /etc/hosts.zs line 3: {line!r}" in text and fragment in text
    assert "allowed: `HOSTNAME slots=N`" in text


@pytest.mark.parametrize("slots", ["0", "-1", "1025", "99999"])
def test_slot_count_out_of_range(slots):
    with pytest.raises(ConfigError, match=rf"line 1: 'a slots={slots}': slots={int(slots)} is out of range; allowed: 1 to 1024"):
        parse_hostfile_text(f"a slots={slots}\n", "hf")


def test_duplicate_host_names_both_lines():
    with pytest.raises(ConfigError, match=r"hf line 3: 'a slots=2': host 'a' is already listed on line 1; allowed: each host once"):
        parse_hostfile_text("a slots=1\nb slots=1\na slots=2\n", "hf")


def test_empty_hostfile_is_an_error():
    with pytest.raises(ConfigError, match=r"hostfile hf lists no hosts"):
        parse_hostfile_text("# nothing\n\n", "hf")


def test_read_hostfile_default_absent_is_local_but_explicit_absent_is_an_error(tmp_path):
    if not os.path.exists("/job/hostfile"):
        assert read_hostfile("/job/hostfile") is None  # DeepSpeed's default path, absent: this machine only
    with pytest.raises(ConfigError, match="no such file"):
        read_hostfile(str(tmp_path / "missing"))
    path = tmp_path / "hf"
    path.write_text("x slots=3\n")
    assert read_hostfile(str(path)) == {"x": 3}


POOL = {"worker-0": 4, "worker-1": 2, "worker-2": 2}


def test_node_specs():
    assert parse_node_specs("worker-0:0,2@worker-1") == {"worker-0": [0, 2], "worker-1": []}
    assert parse_node_specs("a:3,1@a:1,0") == {"a": [0, 1, 3]}  # merged, sorted, deduplicated
    assert parse_node_specs("a@a:1") == {"a": []}  # the whole host wins


@pytest.mark.parametrize("spec, fragment", [
    ("worker-0@", "empty node entry"),
    ("@worker-0", "empty node entry"),
    ("worker-0:", "slot '' of host 'worker-0' is not a non-negative integer"),
    ("worker-0:a", "slot 'a'"),
    ("worker-0:-1", "slot '-1'"),
    ("worker-0:1,,2", "slot ''"),
    (":1", "has no valid host name"),
    ("bad host:1", "has no valid host name"),
])
def test_bad_filter_syntax(spec, fragment):
    with pytest.raises(ConfigError) as info:
        filter_resources(POOL, include=spec)
    assert fragment in str(info.value) and "allowed: NODE_SPEC[@NODE_SPEC ...]" in str(info.value)
    assert f"--include {spec!r}" in str(info.value)


def test_include_keeps_hostfile_order_and_chosen_slots():
    assert filter_resources(POOL, include="worker-2@worker-0:1,3") == {"worker-0": [1, 3], "worker-2": [0, 1]}


def test_exclude_removes_slots_and_whole_hosts():
    assert filter_resources(POOL, exclude="worker-0:0@worker-1") == {"worker-0": [1, 2, 3], "worker-2": [0, 1]}


def test_no_filter_is_every_slot():
    assert filter_resources(POOL) == {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1], "worker-2": [0, 1]}


def test_unknown_host_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"--exclude 'worker-9:0': host 'worker-9' is not in hf; allowed hosts: worker-0, worker-1, worker-2"):
        filter_resources(POOL, exclude="worker-9:0", source="hf")


def test_slot_out_of_range_says_the_range():
    with pytest.raises(ConfigError, match=r"slot 2 of host 'worker-1' is out of range; allowed: 0 to 1 \(worker-1 has slots=2 in hf\)"):
        filter_resources(POOL, include="worker-1:0,2", source="hf")


def test_include_and_exclude_together_and_filters_that_leave_nothing():
    with pytest.raises(ConfigError, match="were both given"):
        filter_resources(POOL, include="worker-0", exclude="worker-1")
    with pytest.raises(ConfigError, match="leaves no slot"):
        filter_resources({"a": 2}, exclude="a:0,1")


def test_num_nodes_and_num_procs():
    resources = filter_resources(POOL)
    assert limit_resources(resources, num_nodes=2) == {"worker-0": [0, 1, 2, 3], "worker-1": [0, 1]}
    assert limit_resources(resources, num_procs=1) == {h: [0] for h in POOL}
    assert limit_resources(resources, num_nodes=1, num_procs=3) == {"worker-0": [0, 1, 2]}
    with pytest.raises(ConfigError, match=r"--num_nodes 4: only 3 host\(s\) available"):
        limit_resources(resources, num_nodes=4)
    with pytest.raises(ConfigError, match="positive number of nodes"):
        limit_resources(resources, num_nodes=0)
    with pytest.raises(ConfigError, match="positive number of processes"):
        limit_resources(resources, num_procs=0)


def test_world_info_round_trip_and_garbage():
    resources = {"worker-0": [0, 2], "worker-1": [1]}
    encoded = encode_world_info(resources)
    assert decode_world_info(encoded) == resources and list(decode_world_info(encoded)) == ["worker-0", "worker-1"]
    with pytest.raises(ConfigError, match="not base64 JSON"):
        decode_world_info("!!!")
    with pytest.raises(ConfigError, match="non-empty"):
        decode_world_info(encode_world_info({}))
