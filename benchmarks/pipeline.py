"""Pipeline parallelism: zerospeed's PipelineEngine side by side with DeepSpeed's, and the bubble.

`python benchmarks/pipeline.py` launches, for each micro-batch count m (default 2, 4, 8)
and each implementation, one `torchrun --standalone --nproc_per_node 2` (2 stages × 1 data
rank, gloo, CPU, one thread per rank) that trains the same model with `train_batch`:
a stack of residual MLP blocks (LayerSpec, uniform partition), MSE loss, AdamW
(DeepSpeed with `torch_adam: true`, so neither side needs a compiled op).

Per run it reports the median step time, samples/s and the measured pipeline bubble:
every ForwardPass/BackwardPass instruction is timed on every stage (the engines'
instruction tables are wrapped, nothing else changes), and

    bubble = 1 - mean over stages of (busy time) / (span of the step's compute, all stages)

next to 1F1B's theoretical (p - 1) / (m + p - 1). Then the ratios zerospeed / DeepSpeed:
of median samples/s, and of the best step (least disturbed when other jobs share the cores).
Every (m, impl) runs `--repeats` times, interleaved. One JSON line per result, then a
markdown table.

One worker by hand:
`OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 benchmarks/pipeline.py --worker --impl zerospeed --micro-batches 4`
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, driver_env, prebuild_deepspeed_ops  # noqa: E402

RESULT_PREFIX = "PIPE_RESULT "


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--stages", type=int, default=2)


# --------------------------------------------------------------------------- worker
def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    if args.impl == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        from deepspeed.pipe import LayerSpec, PipelineModule
        from deepspeed.runtime.pipe import schedule
        from deepspeed.runtime.pipe.engine import PipelineEngine
    else:
        import zerospeed as deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        from zerospeed.pipe import LayerSpec, PipelineModule
        from zerospeed.pipe import schedule
        from zerospeed.pipe.engine import PipelineEngine
    import torch.distributed as dist

    spans: list[tuple[str, float, float]] = []
    for kind in (schedule.ForwardPass, schedule.BackwardPass):  # time each compute instruction
        original = PipelineEngine._INSTRUCTION_MAP[kind]

        def timed(self, *a, _original=original, _name=kind.__name__, **k):
            start = time.perf_counter()
            _original(self, *a, **k)
            spans.append((_name, start, time.perf_counter()))

        PipelineEngine._INSTRUCTION_MAP[kind] = timed

    class Block(torch.nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.up, self.down = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

        def forward(self, x):
            return x + self.down(torch.nn.functional.gelu(self.up(x)))

    torch.manual_seed(0)
    module = PipelineModule([LayerSpec(Block, args.dim) for _ in range(args.layers)], num_stages=args.stages,
                            loss_fn=torch.nn.functional.mse_loss, partition_method="uniform")
    adam = {"lr": 1e-3, "weight_decay": 0.01}
    if args.impl == "deepspeed":
        adam["torch_adam"] = True
    config = {"train_micro_batch_size_per_gpu": args.micro_batch, "gradient_accumulation_steps": args.micro_batches,
              "optimizer": {"type": "AdamW", "params": adam}, "gradient_clipping": 1.0, "steps_per_print": 10**6,
              "zero_optimization": {"stage": 0}}
    engine, *_ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=config)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.micro_batch, args.seq, args.dim, generator=generator),
                torch.randn(args.micro_batch, args.seq, args.dim, generator=generator)) for _ in range(args.micro_batches)]
    step_times, bubbles = [], []
    for step in range(args.warmup_steps + args.steps):
        dist.barrier()
        spans.clear()
        start = time.perf_counter()
        engine.train_batch(iter(batches))
        elapsed = time.perf_counter() - start
        busy = sum(end - begin for _, begin, end in spans)
        first, last = min(begin for _, begin, _ in spans), max(end for _, _, end in spans)
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (start, last, busy, elapsed))
        if step >= args.warmup_steps:
            span = max(e[1] for e in everyone) - min(e[0] for e in everyone)
            bubbles.append(1 - statistics.mean(e[2] for e in everyone) / span)
            step_times.append(max(e[3] for e in everyone))
    if dist.get_rank() == 0:
        p, m = args.stages, args.micro_batches
        median = statistics.median(step_times)
        samples = args.micro_batch * m * (dist.get_world_size() // p)
        print(RESULT_PREFIX + json.dumps({
            "kind": "run", "impl": args.impl, "stages": p, "micro_batches": m, "step_s": round(median, 4),
            "samples_per_s": round(samples / median, 2),
            "step_min_s": round(min(step_times), 4), "bubble_measured": round(statistics.median(bubbles), 4),
            "bubble_theory": round((p - 1) / (m + p - 1), 4), "step_times_s": [round(t, 4) for t in step_times],
        }), flush=True)


# --------------------------------------------------------------------------- driver
def run_one(impl: str, m: int, args: argparse.Namespace, log_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.stages}",
           str(Path(__file__).resolve()), "--worker", "--impl", impl, "--micro-batches", str(m),
           "--layers", str(args.layers), "--dim", str(args.dim), "--seq", str(args.seq), "--micro-batch", str(args.micro_batch),
           "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--stages", str(args.stages)]
    log = log_dir / f"{impl}-m{m}.log"
    res = subprocess.run(cmd, env=driver_env(), cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    log.write_text(res.stdout + res.stderr)
    for line in res.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"kind": "run", "impl": impl, "micro_batches": m, "status": f"failed (exit {res.returncode}), log {log}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--impl", default="zerospeed", choices=["zerospeed", "deepspeed"])
    parser.add_argument("--micro-batches", type=int, default=4, help="worker: gradient_accumulation_steps")
    parser.add_argument("--m", default="2,4,8", help="driver: micro-batch counts")
    parser.add_argument("--impls", default="deepspeed,zerospeed")
    parser.add_argument("--repeats", type=int, default=3, help="driver: every (m, impl) run N times, interleaved; medians reported")
    parser.add_argument("--timeout", type=int, default=600)
    _model_args(parser)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    log_dir = Path(tempfile.mkdtemp(prefix="zerospeed-pipe-bench-"))
    impls = args.impls.split(",")
    meta = {"kind": "meta", "date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cpus",
            "model": f"{args.layers} x MLP block dim {args.dim}, seq {args.seq}, micro-batch {args.micro_batch}",
            "stages": args.stages, "log_dir": str(log_dir)}
    if "deepspeed" in impls:
        meta["deepspeed_ops"] = prebuild_deepspeed_ops(False, log_dir)
    print(json.dumps(meta), flush=True)
    rows = []
    counts = [int(x) for x in args.m.split(",")]
    for repeat in range(args.repeats):
        for m in counts:
            for impl in impls:  # interleaved, so drifting machine load hits both alike
                row = run_one(impl, m, args, log_dir)
                rows.append({**row, "repeat": repeat})
                print(json.dumps(rows[-1]), flush=True)
    failed = [r for r in rows if "status" in r]
    by = {}
    for impl in impls:
        for m in counts:
            runs = [r for r in rows if "status" not in r and r["impl"] == impl and r["micro_batches"] == m]
            if runs:
                by[(impl, m)] = {
                    "kind": "median", "impl": impl, "micro_batches": m, "runs": len(runs), "bubble_theory": runs[0]["bubble_theory"],
                    "step_s": statistics.median(r["step_s"] for r in runs),
                    "samples_per_s": round(statistics.median(r["samples_per_s"] for r in runs), 2),
                    "bubble_measured": round(statistics.median(r["bubble_measured"] for r in runs), 4),
                    "step_min_s": min(r["step_min_s"] for r in runs),  # least disturbed by other load
                }
                print(json.dumps(by[(impl, m)]), flush=True)
    print("\n| m | theory bubble | zerospeed bubble | deepspeed bubble | zerospeed samples/s | deepspeed samples/s | ratio (median) "
          "| zerospeed best step s | deepspeed best step s | ratio (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in counts:
        z, d = by.get(("zerospeed", m)), by.get(("deepspeed", m))
        ratio = round(z["samples_per_s"] / d["samples_per_s"], 3) if z and d else None
        best = round(d["step_min_s"] / z["step_min_s"], 3) if z and d else None
        if ratio is not None:
            print(json.dumps({"kind": "ratio", "micro_batches": m, "samples_per_s_vs_deepspeed": ratio, "best_step_speedup_vs_deepspeed": best}))
        cell = lambda r, k: r[k] if r else "-"  # noqa: E731
        theory = (z or d or {}).get("bubble_theory", "-")
        print(f"| {m} | {theory} | {cell(z, 'bubble_measured')} | {cell(d, 'bubble_measured')} | "
              f"{cell(z, 'samples_per_s')} | {cell(d, 'samples_per_s')} | {ratio if ratio is not None else '-'} | "
              f"{cell(z, 'step_min_s')} | {cell(d, 'step_min_s')} | {best if best is not None else '-'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
