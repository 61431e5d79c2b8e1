"""Hostfiles (`host slots=N`), `--include`/`--exclude` filters and the world-info encoding.

Pure functions, no torch: the launcher turns a hostfile plus filters into an ordered
`{host: [slot, ...]}` map (the "active resources"), which every node agent receives
base64-encoded as `--world_info`, exactly as DeepSpeed's runner does. Every mistake is a
`ConfigError` that names the file, the line number, the text and what is allowed.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping

from zerospeed.errors import ConfigError

DLTS_HOSTFILE = "/job/hostfile"  # DeepSpeed's default --hostfile; absent means "this machine only"
MAX_SLOTS = 1024  # one node never offers more processes than this; a bigger number is a typo
HOSTFILE_SYNTAX = "`HOSTNAME slots=N` (N from 1 to 1024), blank lines and `# comments`"
FILTER_SYNTAX = "NODE_SPEC[@NODE_SPEC ...] with NODE_SPEC = HOST[:SLOT[,SLOT ...]], e.g. 'worker-0@worker-1:0,2'"

_HOST = r"[A-Za-z0-9_.\-\[\]:]+"  # names, IPv4/IPv6 literals, bracketed IPv6
_LINE = re.compile(rf"^(?P<host>{_HOST})\s+slots\s*=\s*(?P<slots>-?\d+)\s*$")


def parse_hostfile_text(text: str, source: str = "<hostfile>") -> dict[str, int]:
    """`{host: slots}` in file order from hostfile `text`; `source` names it in errors."""
    pool: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ConfigError(f"hostfile {source} line {number}: {raw.strip()!r} is not a valid entry; allowed: {HOSTFILE_SYNTAX}")
        host, slots = match.group("host"), int(match.group("slots"))
        if not 1 <= slots <= MAX_SLOTS:
            raise ConfigError(
                f"hostfile {source} line {number}: {raw.strip()!r}: slots={slots} is out of range; allowed: 1 to {MAX_SLOTS}"
            )
        if host in pool:
            raise ConfigError(
                f"hostfile {source} line {number}: {raw.strip()!r}: host {host!r} is already listed on line "
                f"{first_seen[host]}; allowed: each host once (put all its slots on one line)"
            )
        pool[host] = slots
        first_seen[host] = number
    if not pool:
        raise ConfigError(f"hostfile {source} lists no hosts; allowed: {HOSTFILE_SYNTAX}")
    return pool


def read_hostfile(path: str | None) -> dict[str, int] | None:
    """The hostfile's pool, or None when the default path (DeepSpeed's /job/hostfile) is absent.

    A path the user named explicitly must exist.
    """
    if path is None or (path == DLTS_HOSTFILE and not os.path.isfile(path)):
        return None
    if not os.path.isfile(path):
        raise ConfigError(f"--hostfile {path}: no such file; allowed: a file of lines {HOSTFILE_SYNTAX}")
    with open(path, encoding="utf-8") as handle:
        return parse_hostfile_text(handle.read(), source=path)


def parse_node_specs(spec: str, flag: str = "--include") -> dict[str, list[int]]:
    """`host1:0,1@host2` -> {"host1": [0, 1], "host2": []}; [] means every slot of the host.

    A host named twice merges its slots; naming it without slots anywhere means all of them.
    """
    nodes: dict[str, list[int]] = {}
    for item in spec.split("@"):
        item = item.strip()
        if not item:
            raise ConfigError(f"{flag} {spec!r}: empty node entry (a stray '@'); allowed: {FILTER_SYNTAX}")
        host, colon, slot_text = item.partition(":")
        if not host or not re.fullmatch(_HOST, host):
            raise ConfigError(f"{flag} {spec!r}: {item!r} has no valid host name; allowed: {FILTER_SYNTAX}")
        slots: list[int] = []
        if colon:
            for piece in slot_text.split(","):
                piece = piece.strip()
                if not piece.isdigit():
                    raise ConfigError(
                        f"{flag} {spec!r}: slot {piece!r} of host {host!r} is not a non-negative integer; allowed: {FILTER_SYNTAX}"
                    )
                slots.append(int(piece))
        whole = not slots or (host in nodes and not nodes[host])
        nodes[host] = [] if whole else sorted(set(nodes.get(host, [])) | set(slots))
    return nodes


def filter_resources(pool: Mapping[str, int], include: str = "", exclude: str = "",
                     source: str = "the hostfile") -> dict[str, list[int]]:
    """Apply `--include` or `--exclude` to `pool`; returns `{host: [slots]}` in pool order."""
    if include and exclude:
        raise ConfigError(f"--include {include!r} and --exclude {exclude!r} were both given; allowed: one of them")
    resources = {host: list(range(slots)) for host, slots in pool.items()}
    flag, spec = ("--include", include) if include else ("--exclude", exclude)
    if not spec:
        return resources
    chosen: dict[str, list[int]] = {}
    for host, slots in parse_node_specs(spec, flag).items():
        if host not in resources:
            raise ConfigError(f"{flag} {spec!r}: host {host!r} is not in {source}; allowed hosts: {', '.join(resources)}")
        bad = [s for s in slots if s >= len(resources[host])]
        if bad:
            raise ConfigError(
                f"{flag} {spec!r}: slot {bad[0]} of host {host!r} is out of range; allowed: 0 to {len(resources[host]) - 1} "
                f"({host} has slots={len(resources[host])} in {source})"
            )
        chosen[host] = slots or list(resources[host])
    if include:
        result = {host: chosen[host] for host in resources if host in chosen}
    else:
        result = {host: [s for s in slots if s not in chosen.get(host, [])] for host, slots in resources.items()}
        result = {host: slots for host, slots in result.items() if slots}
    if not result:
        raise ConfigError(f"{flag} {spec!r} leaves no slot to run on; allowed: a filter that keeps at least one slot")
    return result


def limit_resources(resources: Mapping[str, list[int]], num_nodes: int = -1, num_procs: int = -1) -> dict[str, list[int]]:
    """DeepSpeed's `--num_nodes` (first K hosts) and `--num_gpus` (slots 0..N-1 on each host)."""
    hosts = list(resources)
    if num_nodes > 0:
        if num_nodes > len(hosts):
            raise ConfigError(f"--num_nodes {num_nodes}: only {len(hosts)} host(s) available ({', '.join(hosts)})")
        hosts = hosts[:num_nodes]
    elif num_nodes == 0 or num_nodes < -1:
        raise ConfigError(f"--num_nodes {num_nodes}: allowed: a positive number of nodes")
    if num_procs == 0 or num_procs < -1:
        raise ConfigError(f"--num_gpus/--num_procs {num_procs}: allowed: a positive number of processes per node")
    if num_procs > 0:
        return {host: list(range(num_procs)) for host in hosts}
    return {host: list(resources[host]) for host in hosts}


def encode_world_info(resources: Mapping[str, list[int]]) -> str:
    """`{host: [slots]}` as url-safe base64 JSON (DeepSpeed's --world_info)."""
    return base64.urlsafe_b64encode(json.dumps(dict(resources)).encode("utf-8")).decode("ascii")


def decode_world_info(text: str) -> dict[str, list[int]]:
    try:
        value = json.loads(base64.urlsafe_b64decode(text.encode("ascii")).decode("utf-8"))
    except (ValueError, UnicodeError) as error:
        raise ConfigError(f"--world_info {text!r} is not base64 JSON written by the zerospeed launcher: {error}") from None
    if not isinstance(value, dict) or not value or not all(isinstance(v, list) and v for v in value.values()):
        raise ConfigError(f"--world_info decodes to {value!r}; expected a non-empty {{host: [slots]}} map")
    return {str(host): [int(s) for s in slots] for host, slots in value.items()}
