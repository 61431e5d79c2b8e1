#!/usr/bin/env python
"""Train a byte-level GPT with a DeepSpeed-style script: `import zerospeed as deepspeed`.

    torchrun --standalone --nproc_per_node 2 examples/gpt/train.py --config examples/configs/zero2.json
    examples/gpt/run.sh                      # the same, with defaults that fit a 2-core CPU box

`--impl deepspeed` imports the real DeepSpeed instead; nothing else in the script changes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from data import VOCAB_SIZE, build_datasets
from model import GPT, GPTConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "zero2.json"


def import_impl() -> object:
    """Import the runtime chosen by --impl before the real parser exists (it needs add_config_arguments)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--impl", choices=["zerospeed", "deepspeed"], default="zerospeed")
    impl = pre.parse_known_args()[0].impl
    if impl == "deepspeed" and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return importlib.import_module(impl)


deepspeed = import_impl()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", choices=["zerospeed", "deepspeed"], default="zerospeed",
                   help="runtime to import as `deepspeed` (default zerospeed)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="DeepSpeed JSON config (default: ZeRO-2)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--data", default=None, help="text file or directory (default: the Python stdlib's sources)")
    p.add_argument("--max-bytes", type=int, default=8 * 2**20, help="corpus size cap")
    p.add_argument("--val-batches", type=int, default=8, help="micro-batches per rank for the val loss")
    p.add_argument("--log-every", type=int, default=20, help="log line interval when stderr is not a terminal")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json-out", default=None, help="also append the summary JSON line to this file")
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    p = deepspeed.add_config_arguments(p)
    return p.parse_args()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def gather_floats(values: list[float]) -> list[list[float]]:
    """Every rank's `values`, gathered onto every rank."""
    local = torch.tensor(values, dtype=torch.float64)
    out = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [t.tolist() for t in out]


def mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def endless(loader):
    """Yield batches forever, advancing the distributed sampler's epoch between passes."""
    epoch = 0
    while True:
        sampler = getattr(loader, "data_sampler", None) or getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


@torch.no_grad()
def evaluate(engine, dataset, micro_batch: int, batches: int, device) -> float:
    """Mean loss over `batches` fixed micro-batches per rank (each rank takes its own slice)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    engine.eval()
    total, count = 0.0, 0
    for b in range(batches):
        start = (b * world + rank) * micro_batch
        idx = [i % len(dataset) for i in range(start, start + micro_batch)]
        x = torch.stack([dataset[i][0] for i in idx]).to(device)
        y = torch.stack([dataset[i][1] for i in idx]).to(device)
        total += engine(x, y).item()
        count += 1
    engine.train()
    return mean_over_ranks(total / max(count, 1))


class Progress:
    """tqdm bar on rank 0 when stderr is a terminal, else a log line every `every` steps."""

    def __init__(self, steps: int, every: int, enabled: bool) -> None:
        self.enabled, self.every = enabled, every
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=steps, desc="train", dynamic_ncols=True)

    def update(self, step: int, loss: float, tokens_per_s: float, rss_mb: list[float], lr: float) -> None:
        mem = "/".join(f"{m:.0f}" for m in rss_mb)
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.3f} tok/s={tokens_per_s:,.0f} lr={lr:.2e} rss_mb={mem}")
            self.bar.update(1)
        elif self.enabled and (step % self.every == 0 or step == 1):
            print(f"step {step:5d}  loss {loss:.4f}  tok/s {tokens_per_s:,.0f}  lr {lr:.2e}  rss MB/rank {mem}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main() -> int:
    args = parse_args()
    torch.manual_seed(args.seed)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()

    train_set, val_set = build_datasets(args.data, args.seq, max_bytes=args.max_bytes,
                                        show_progress=rank == 0 and sys.stderr.isatty())
    model = GPT(GPTConfig(vocab_size=VOCAB_SIZE, seq_len=args.seq, layers=args.layers, dim=args.dim, heads=args.heads))
    config = args.deepspeed_config or args.config
    t0 = time.perf_counter()
    engine, optimizer, loader, scheduler = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), training_data=train_set, config=config)
    init_s = time.perf_counter() - t0

    gas = engine.gradient_accumulation_steps()
    micro = engine.train_micro_batch_size_per_gpu()
    device = getattr(engine, "device", torch.device("cpu"))
    tokens_per_step = world * micro * gas * args.seq
    if rank == 0:
        print(f"{args.impl} {getattr(deepspeed, '__version__', '?')}: {model.num_params() / 1e6:.2f}M params, "
              f"{len(train_set)} train / {len(val_set)} val windows of {args.seq} bytes, world={world}, "
              f"micro_batch={micro}, grad_accum={gas}, config={config}, initialize {init_s:.2f}s", flush=True)

    progress = Progress(args.steps, args.log_every, enabled=rank == 0)
    batches = endless(loader)
    start = time.perf_counter()
    step_start = start
    first_loss = loss_value = float("nan")
    timed_tokens, timed_s = 0, 0.0
    for step in range(1, args.steps + 1):
        total = 0.0
        for _ in range(gas):
            x, y = (t.to(device) for t in next(batches))
            loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            total += loss.item()
        loss_value = total / gas
        now = time.perf_counter()
        if step > 1:  # the first step pays for allocator warm-up; leave it out of the rate
            timed_tokens += tokens_per_step
            timed_s += now - step_start
        step_start = now
        if step == 1:
            first_loss = mean_over_ranks(loss_value)
        tokens_per_s = timed_tokens / timed_s if timed_s else tokens_per_step / (now - start)
        log_now = progress.bar is not None or step % args.log_every == 0 or step in (1, args.steps)
        # the RSS gather is a collective: every rank decides the same way whether to run it
        rss = [r[0] for r in gather_floats([psutil.Process().memory_info().rss / 2**20])] if log_now else []
        lr = scheduler.get_last_lr()[0] if scheduler is not None else optimizer.param_groups[0]["lr"]
        progress.update(step, loss_value, tokens_per_s, rss, lr)
    progress.close()
    train_s = time.perf_counter() - start

    final_loss = mean_over_ranks(loss_value)
    val_loss = evaluate(engine, val_set, micro, args.val_batches, device)
    peaks = [r[0] for r in gather_floats([peak_rss_mb()])]
    summary = {
        "impl": args.impl, "config": str(config), "world_size": world, "params": model.num_params(),
        "layers": args.layers, "dim": args.dim, "heads": args.heads, "seq": args.seq,
        "micro_batch": micro, "grad_accum": gas, "steps": args.steps,
        "first_loss": round(first_loss, 4), "final_loss": round(final_loss, 4), "val_loss": round(val_loss, 4),
        "val_bits_per_byte": round(val_loss / math.log(2), 4),
        "tokens_per_s": round(timed_tokens / timed_s if timed_s else tokens_per_step * args.steps / train_s, 1),
        "initialize_s": round(init_s, 3), "train_s": round(train_s, 2),
        "peak_rss_mb_per_rank": [round(p, 1) for p in peaks],
    }
    if rank == 0:
        print(f"done: loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}, val loss {val_loss:.3f} "
              f"({summary['val_bits_per_byte']:.2f} bits/byte), {summary['tokens_per_s']:,.0f} tok/s, "
              f"peak RSS MB/rank {'/'.join(f'{p:.0f}' for p in peaks)}, {train_s:.1f}s", flush=True)
        line = json.dumps({"summary": summary})
        print(line, flush=True)
        if args.json_out:
            with open(args.json_out, "a") as f:
                f.write(line + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
