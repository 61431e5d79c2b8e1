"""`zerospeed io-bench --path DIR`: measure read/write GB/s of a directory, suggest an `aio` section.

The role of DeepSpeed's `ds_io` / `ds_nvme_tune`: it sweeps block size, queue depth (blocks
per system call) and worker threads of zerospeed's async I/O engine, writing then reading
one file of `--size-mb` MiB per setting (O_DIRECT where the file system takes it; else
buffered with the pages dropped after each write, so reads come from the device), prints a
table and the setting with the best read + write bandwidth as a config snippet.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

HELP = "measure a directory's read/write bandwidth with zerospeed's async I/O and suggest an 'aio' section"


def _ints(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", required=True, help="directory to test (the future nvme_path)")
    parser.add_argument("--size-mb", type=int, default=256, help="MiB written and read per setting (default 256)")
    parser.add_argument("--block-sizes", type=_ints, default=[262144, 1048576, 4194304],
                        help="comma-separated block sizes in bytes (default 262144,1048576,4194304)")
    parser.add_argument("--queue-depths", type=_ints, default=[1, 8, 32], help="comma-separated (default 1,8,32)")
    parser.add_argument("--threads", type=_ints, default=[1, 2, 4], help="comma-separated worker counts (default 1,2,4)")
    parser.add_argument("--trials", type=int, default=1, help="runs per setting; the best is kept (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per setting and the suggestion")


def measure(path: str, size_bytes: int, block_size: int, queue_depth: int, threads: int, trials: int = 1) -> dict:
    """Best write and read GB/s of one setting over `trials` runs, with the file mode used."""
    import torch

    from zerospeed.io import AsyncIO, IOPolicy, aligned_empty

    engine = AsyncIO(IOPolicy(block_size=block_size, queue_depth=queue_depth, threads=threads))
    source = aligned_empty(size_bytes, torch.uint8).random_(0, 255)
    target = aligned_empty(size_bytes, torch.uint8)
    handle, file_path = tempfile.mkstemp(prefix=".zerospeed-io-bench-", dir=path)
    os.close(handle)
    best = {"write_gbps": 0.0, "read_gbps": 0.0}
    try:
        file = engine.open(file_path)
        try:
            for _ in range(max(1, trials)):
                began = time.perf_counter()
                engine.write(source, file).wait()
                if not file.direct:
                    os.fsync(file.fd)
                wrote = time.perf_counter() - began
                began = time.perf_counter()
                engine.read(target, file).wait()
                read = time.perf_counter() - began
                best["write_gbps"] = max(best["write_gbps"], size_bytes / wrote / 1e9)
                best["read_gbps"] = max(best["read_gbps"], size_bytes / read / 1e9)
            if not torch.equal(source[:4096], target[:4096]) or not torch.equal(source[-4096:], target[-4096:]):
                raise RuntimeError(f"io-bench: data read back from {file_path} differs from what was written")
            direct = file.direct
        finally:
            file.close()
    finally:
        os.unlink(file_path)
        engine.close()
    return {"block_size": block_size, "queue_depth": queue_depth, "threads": threads, "direct": direct, **best}


def suggest(results: list[dict]) -> dict:
    """The `aio` section of the setting with the best read + write bandwidth."""
    best = max(results, key=lambda r: r["read_gbps"] + r["write_gbps"])
    return {"aio": {"block_size": best["block_size"], "queue_depth": best["queue_depth"],
                    "intra_op_parallelism": best["threads"], "single_submit": False, "overlap_events": True}}


def run(args: argparse.Namespace) -> int:
    from zerospeed.zero.offload.swap_dir import check_path

    size = args.size_mb << 20
    try:
        check_path(args.path, size + (1 << 20), "--path")
    except ValueError as error:
        print(f"zerospeed io-bench: {error}", file=sys.stderr)
        return 2
    results = []
    if not args.json:
        print(f"{'block_size':>10} {'queue_depth':>11} {'threads':>7} {'mode':>8} {'write GB/s':>10} {'read GB/s':>9}")
    for block, depth, threads in itertools.product(args.block_sizes, args.queue_depths, args.threads):
        result = measure(args.path, size, block, depth, threads, args.trials)
        results.append(result)
        if args.json:
            print(json.dumps(result))
        else:
            mode = "O_DIRECT" if result["direct"] else "buffered"
            print(f"{block:>10} {depth:>11} {threads:>7} {mode:>8} {result['write_gbps']:>10.2f} {result['read_gbps']:>9.2f}",
                  flush=True)
    section = suggest(results)
    if args.json:
        print(json.dumps({"suggested": section}))
    else:
        print("\nsuggested config section:")
        print(json.dumps(section, indent=2))
    return 0
