"""`zerospeed consolidate CKPT_DIR OUT`: full weights from a checkpoint, offline (no torch at import)."""

from __future__ import annotations

import argparse
import sys

HELP = "write a checkpoint's full weights (fp32 by default) as one state dict, streamed tensor by tensor"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint_dir", help="the directory given to save_checkpoint (holding 'latest' and tags)")
    parser.add_argument("output", help="a file (.safetensors, .bin, .pt) or a directory (Hugging Face names)")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: 'latest', else the newest complete one)")
    parser.add_argument("--safetensors", action="store_true", help="write safetensors (always for a .safetensors file)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="dtype of float tensors")
    parser.add_argument("--max-shard-size", default="5GB", help="directory output: shard above this size (e.g. 2GB)")
    parser.add_argument("--exclude-frozen-parameters", action="store_true", help="leave out requires_grad=False params")


def run(args: argparse.Namespace) -> int:
    from zerospeed.checkpoint.consolidate import export
    from zerospeed.errors import CheckpointError

    try:
        written = export(args.checkpoint_dir, args.output, tag=args.tag, dtype=args.dtype,
                         safe_serialization=args.safetensors, max_shard_size=args.max_shard_size,
                         exclude_frozen_parameters=args.exclude_frozen_parameters)
    except CheckpointError as error:
        print(f"zerospeed consolidate: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
