"""DeepSpeed's `deepspeed.launcher.runner`: `main()` is the `zerospeed` launcher (`zerospeed launch`).

Scripts and wrappers that start training through `deepspeed.launcher.runner.main(argv)`
get zerospeed's launcher with DeepSpeed's flags; the helpers DeepSpeed exposes here are the
launcher's own hostfile and resource-filter functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from zerospeed.launcher.hostfile import DLTS_HOSTFILE, encode_world_info, filter_resources, read_hostfile


def parse_args(args: Sequence[str] | None = None) -> argparse.Namespace:
    """The launcher's arguments (DeepSpeed's flags), parsed from `args` or sys.argv[1:]."""
    from zerospeed.launcher import launch

    parser = argparse.ArgumentParser(prog="zerospeed", description=launch.HELP)
    launch.add_arguments(parser)
    return parser.parse_args(args)


def fetch_hostfile(hostfile_path: str) -> dict[str, int] | None:
    """`{host: slots}` from an MPI-style hostfile, or None when the file does not exist (local run)."""
    if not os.path.isfile(hostfile_path):
        return None
    return read_hostfile(hostfile_path)


def parse_resource_filter(host_info: Mapping[str, int], include_str: str = "", exclude_str: str = "") -> dict[str, list[int]]:
    """`{host: [slots]}` left after `--include` / `--exclude` (DeepSpeed's NODE_SPEC syntax)."""
    return filter_resources(host_info, include_str, exclude_str)


def main(args: Sequence[str] | None = None) -> int:
    """Launch as `zerospeed launch ARGS` would; returns the exit status."""
    from zerospeed.launcher.cli import main as cli_main

    argv = list(sys.argv[1:] if args is None else args)
    return cli_main(["launch", *argv])


__all__ = ["DLTS_HOSTFILE", "encode_world_info", "fetch_hostfile", "main", "parse_args", "parse_resource_filter"]
