"""`zerospeed` console script: argparse front door that dispatches to one module per subcommand.

`zerospeed script.py ARGS` (no subcommand, DeepSpeed's `deepspeed` form) means
`zerospeed launch script.py ARGS`: any first word that is not a subcommand or a
top-level flag starts the launcher.

A subcommand is a module with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`, registered in `SUBCOMMANDS`. Modules must not import torch at import
time, so `zerospeed --version` and `zerospeed <cmd> --help` stay fast; they import what
they need inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zerospeed.version import __version__

# name -> module implementing it
SUBCOMMANDS: dict[str, str] = {
    "launch": "zerospeed.launcher.launch",
    "report": "zerospeed.launcher.report",
    "consolidate": "zerospeed.checkpoint.cli",
    "plot": "zerospeed.launcher.plot",
    "io-bench": "zerospeed.launcher.io_bench",
}


TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerospeed",
        description="zerospeed: DeepSpeed's API and config on a simpler runtime.",
    )
    parser.add_argument("--version", action="version", version=__version__, help="print the zerospeed version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # registered by a change whose module is not in this checkout yet
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the subcommand, return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and argv[0] not in TOP_LEVEL_FLAGS:
        argv = ["launch", *argv]  # DeepSpeed's form: `zerospeed [launcher flags] script.py args`
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
