"""DeepSpeed's command-line flags for user scripts: `--deepspeed`, `--deepspeed_config`.

Same group title, flags, defaults and help text as DeepSpeed 0.19.8's
`deepspeed.add_config_arguments`, so `args.deepspeed_config` can be handed to
`initialize(args=args)` unchanged. Imports nothing heavier than argparse.
"""

from __future__ import annotations

import argparse


def _add_core_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the "DeepSpeed" argument group (DeepSpeed's internal helper, same name)."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument(
        "--deepspeed",
        default=False,
        action="store_true",
        help="Enable DeepSpeed (helper flag for user code, no impact on DeepSpeed backend)",
    )
    group.add_argument("--deepspeed_config", default=None, type=str, help="DeepSpeed json configuration file.")
    group.add_argument(
        "--deepscale",
        default=False,
        action="store_true",
        help="Deprecated enable DeepSpeed (helper flag for user code, no impact on DeepSpeed backend)",
    )
    group.add_argument(
        "--deepscale_config", default=None, type=str, help="Deprecated DeepSpeed json configuration file."
    )
    return parser


add_core_arguments = _add_core_arguments


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's flags to `parser` and return it.

    `--deepspeed` (store_true), `--deepspeed_config PATH`, and the deprecated
    `--deepscale` / `--deepscale_config` that DeepSpeed still accepts.
    """
    return _add_core_arguments(parser)


__all__ = ["add_config_arguments", "add_core_arguments"]
