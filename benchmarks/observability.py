#!/usr/bin/env python
"""Cost of observability: throughput with every monitor + wall_clock_breakdown on vs all off, 2 ranks.

    python benchmarks/observability.py                    # GPT 4x256, seq 128, 2 ranks (gloo, CPU)
    python benchmarks/observability.py --blocks 6 --block-steps 5 --memory-breakdown

One `torchrun --nproc_per_node 2` runs two engines side by side on the same model and data:
"off" (no monitor, no timers) and "on" (tensorboard + csv_monitor + wandb offline, when
installed, + wall_clock_breakdown; optionally memory_breakdown). They train in alternating
blocks of steps (off, on, off, on, ...) so both see the same background load; the first block
of each is warm-up. Prints one JSON line per mode and the ratio, then a markdown row.
Target: cost < 3 % of throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "OBS_RESULT "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--blocks", type=int, default=5, help="measured blocks per mode (one more is warm-up)")
    p.add_argument("--block-steps", type=int, default=4)
    p.add_argument("--memory-breakdown", action="store_true", help="also turn memory_breakdown on")
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument("--timeout", type=int, default=900, help="seconds before the torchrun is killed")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def engine_config(args, on: bool, out_dir: str) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
        "steps_per_print": 10, "zero_optimization": {"stage": 1},
    }
    if on:
        wandb = not args.no_wandb and _installed("wandb")
        config.update({
            "wall_clock_breakdown": True, "memory_breakdown": args.memory_breakdown,
            "tensorboard": {"enabled": _installed("tensorboard"), "output_path": out_dir, "job_name": "tb"},
            "csv_monitor": {"enabled": True, "output_path": out_dir, "job_name": "csv"},
            "wandb": {"enabled": wandb, "project": "zerospeed-bench"},
        })
    return config


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the wandb service), user + system."""
    import psutil

    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def worker(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    import zerospeed as deepspeed
    from examples.gpt.model import GPT, GPTConfig

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = deepspeed.comm.get_rank(), deepspeed.comm.get_world_size()
    engines = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=args.vocab, seq_len=args.seq, layers=args.layers, dim=args.dim, heads=args.heads))
        engines[mode], *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                                 config=engine_config(args, mode == "on", args.out_dir))
    generator = torch.Generator().manual_seed(1 + rank)
    tokens = torch.randint(0, args.vocab, (args.micro_batch, args.seq + 1), generator=generator)
    x, y = tokens[:, :-1], tokens[:, 1:]
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu_ms: dict[str, list[float]] = {"off": [], "on": []}  # rank 0 CPU per step, its children (wandb) included
    for block in range(args.blocks + 1):
        for mode in (("off", "on") if block % 2 == 0 else ("on", "off")):
            engine = engines[mode]
            deepspeed.comm.barrier()
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            for _ in range(args.block_steps):
                loss = engine(x, y)
                engine.backward(loss)
                engine.step()
            deepspeed.comm.barrier()
            if block > 0:
                rates[mode].append(args.block_steps * args.micro_batch * world / (time.perf_counter() - start))
                cpu_ms[mode].append((_cpu_seconds() - cpu_start) * 1000.0 / args.block_steps)
    engines["on"].monitor.close()
    if rank == 0:
        params = sum(p.numel() for p in engines["off"].module.parameters())
        print(PREFIX + json.dumps({"rates": rates, "cpu_ms": cpu_ms, "params": params, "world": world,
                                   "monitors": sorted(engines["on"].monitor.monitors)}), flush=True)


def driver(args) -> int:
    with tempfile.TemporaryDirectory(prefix="zs-obs-") as out_dir:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               __file__, "--worker", "--out-dir", out_dir] + [a for a in sys.argv[1:] if a != "--worker"]
        env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_DIR=out_dir, WANDB_SILENT="true",
                   PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
    lines = [line[len(PREFIX):] for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        return 1
    result = json.loads(lines[-1])
    median = {mode: statistics.median(rates) for mode, rates in result["rates"].items()}
    # paired blocks (off and on back to back) cancel slow drifts in the machine's load
    paired = [on / off for off, on in zip(result["rates"]["off"], result["rates"]["on"])]
    ratio = statistics.median(paired)
    for mode in ("off", "on"):
        print(json.dumps({"bench": "observability", "mode": mode, "samples_per_s": round(median[mode], 3),
                          "blocks": result["rates"][mode]}))
    cpu = {mode: statistics.median(values) for mode, values in result["cpu_ms"].items()}
    summary = {"bench": "observability", "ratio_on_over_off": round(ratio, 4), "cost_pct": round(100 * (1 - ratio), 2),
               "rank0_cpu_ms_per_step": {m: round(v, 2) for m, v in cpu.items()},
               "cpu_cost_pct": round(100 * (cpu["on"] - cpu["off"]) / cpu["off"], 2),
               "monitors": result["monitors"] + ["wall_clock_breakdown"] + (["memory_breakdown"] if args.memory_breakdown else []),
               "params": result["params"], "world": result["world"], "target_cost_pct": 3.0}
    print(json.dumps(summary))
    print("\n| model | monitors on | samples/s off | samples/s on | throughput cost | rank-0 CPU ms/step off / on |\n"
          "|---|---|---|---|---|---|")
    print(f"| GPT {args.layers}x{args.dim}, seq {args.seq}, {result['params'] / 1e6:.1f}M params, 2 ranks | "
          f"{', '.join(summary['monitors'])} | {median['off']:.2f} | {median['on']:.2f} | {summary['cost_pct']:.2f} % | "
          f"{cpu['off']:.1f} / {cpu['on']:.1f} ({summary['cpu_cost_pct']:+.2f} %) |")
    return 0


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(worker(arguments) or 0 if arguments.worker else driver(arguments))
