#!/usr/bin/env python
"""Checkpoint save/load side by side: DeepSpeed vs zerospeed on the example GPT, in one run.

    python benchmarks/checkpoint.py                      # stage 2, 29.5M-param GPT, 2 ranks, 3 saves + 3 loads each
    python benchmarks/checkpoint.py --stage 2,3 --repeats 5
    python benchmarks/checkpoint.py --impls zerospeed    # zerospeed only

Each (impl, stage) runs in its own `torchrun --nproc_per_node 2` (gloo, CPU): trains 2 steps
so the optimizer has state, then times `save_checkpoint` (barrier to barrier, every rank)
and `load_checkpoint` into the same engine, `--repeats` times each; zerospeed also times an
async save's stall (until `save_checkpoint` returns), the wait of the training step that follows
it (the step waits for the background copies of the tensors it updates) and its total (until
`wait_for_checkpoint`), and rank 0 times offline consolidation (`zero_to_fp32`'s
`get_fp32_state_dict_from_zero_checkpoint`) for both. GB/s = checkpoint bytes on disk /
median seconds. zerospeed fsyncs every file (DeepSpeed does not) and verifies CRC32s on load;
"durable save" is DeepSpeed's save plus an fsync of its files afterwards (zerospeed's save
already is durable). Every run starts with `os.sync()`, so no run pays for the write-back of
an earlier one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (RESULT_PREFIX, ROOT, add_model_args, deepspeed_config, driver_env, emit,  # noqa: E402
                    make_batches, model_argv, parse_impls)


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _fsync_share(tag_dir: str, rank: int, world: int) -> None:
    """fsync this rank's share of the files under `tag_dir` (file i by rank i mod world), then the dirs."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(tag_dir) for f in files)
    for path in paths[rank::world] + ([tag_dir, os.path.dirname(tag_dir)] if rank == 0 else []):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _timed(fn, barrier) -> float:
    barrier()
    start = time.perf_counter()
    fn()
    barrier()
    return time.perf_counter() - start


def worker(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["deepspeed", "zerospeed"], required=True)
    p.add_argument("--stage", type=int, default=2)
    p.add_argument("--offload", default="none")
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--repeats", type=int, default=3)
    add_model_args(p, layers=8, dim=512, heads=8, seq=128, micro_batch=2, steps=2, warmup_steps=0)
    args = p.parse_args(argv)
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "examples" / "gpt"))
    from model import GPT, GPTConfig

    torch.set_num_threads(1)
    record = {"impl": args.impl, "stage": args.stage, "status": "ok"}
    rank = int(os.environ.get("RANK", "0"))
    try:
        if args.impl == "deepspeed":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            import deepspeed as ds
        else:
            import zerospeed as ds
        ds.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=900))
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(args.seed)
        model = GPT(GPTConfig(vocab_size=args.vocab, seq_len=args.seq, layers=args.layers, dim=args.dim, heads=args.heads))
        record["params"] = model.num_params()
        engine, _, _, _ = ds.initialize(model=model, model_parameters=model.parameters(), config=deepspeed_config(args, world))
        for step in make_batches(args.vocab, args.seq, args.micro_batch, 1, args.steps, args.seed, world, rank):
            for x, y in step:
                engine.backward(engine(x, y))
                engine.step()
        root = os.path.join(args.ckpt_dir, f"{args.impl}-z{args.stage}")
        # Flush what earlier runs left dirty (DeepSpeed does not fsync: its last run's ~1 GB would
        # still be going to disk, slowing the fsyncs of whichever run comes next).
        os.sync()
        dist.barrier()
        saves, syncs = [], []
        for i in range(args.repeats):
            saves.append(_timed(lambda i=i: engine.save_checkpoint(root, tag=f"t{i}"), dist.barrier))
            if args.impl == "deepspeed":  # what making its files durable costs (zerospeed's save includes it)
                syncs.append(_timed(lambda i=i: _fsync_share(os.path.join(root, f"t{i}"), rank, world), dist.barrier))
        if syncs:
            record["save_durable_s"] = [save + sync for save, sync in zip(saves, syncs)]
        loads = [_timed(lambda i=i: engine.load_checkpoint(root, tag=f"t{i}"), dist.barrier) for i in range(args.repeats)]
        record.update(save_s=saves, load_s=loads, bytes=_dir_bytes(os.path.join(root, "t0")), world_size=world)
        if args.impl == "zerospeed":
            stalls, waits, totals = [], [], []
            for i in range(args.repeats):
                dist.barrier()
                start = time.perf_counter()
                engine.save_checkpoint(root, tag=f"a{i}", async_save=True)
                stalls.append(time.perf_counter() - start)
                snap = engine.__dict__["_checkpoint_pending"].snap
                engine.backward(engine(x, y))  # training goes on; this step waits for the background copies
                engine.step()
                waits.append(snap.step_wait_s)
                engine.wait_for_checkpoint()
                totals.append(time.perf_counter() - start)
            record.update(async_stall_s=stalls, async_step_wait_s=waits, async_total_s=totals)
        dist.barrier()
        if rank == 0:
            if args.impl == "deepspeed":
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            else:
                from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
            start = time.perf_counter()
            state = get_fp32_state_dict_from_zero_checkpoint(root, tag="t0")
            record["consolidate_s"] = time.perf_counter() - start
            record["consolidated_tensors"] = len(state)
        dist.barrier()
    except Exception as error:  # noqa: BLE001 - rank 0's line carries the error
        sys.stderr.write(f"[rank {rank}] {traceback.format_exc()}\n")
        record["status"] = f"{type(error).__name__}: {error}"[:1500]
    if rank == 0:
        print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0 if record["status"] == "ok" else 1


def _run(impl: str, stage: int, args, ckpt_dir: str, log_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           str(Path(__file__).resolve()), "--worker", "--impl", impl, "--stage", str(stage), "--ckpt-dir", ckpt_dir,
           "--repeats", str(args.repeats), *model_argv(args)]
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=driver_env(), capture_output=True, text=True, timeout=args.timeout)
        out = res.stdout + res.stderr
    except subprocess.TimeoutExpired as error:
        out = str(error.stdout or "")
    (log_dir / f"{impl}-z{stage}.log").write_text(" ".join(cmd) + "\n" + out)
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            record["wall_s"] = round(time.perf_counter() - start, 1)
            return record
    tail = " | ".join(out.strip().splitlines()[-3:])
    return {"impl": impl, "stage": stage, "status": f"failed: {tail[-800:]}"}


def _summary(record: dict) -> dict:
    if record.get("status") != "ok":
        return record
    gb = record["bytes"] / 1e9
    out = dict(record)
    for key in ("save_s", "save_durable_s", "load_s", "async_stall_s", "async_step_wait_s", "async_total_s"):
        if key in record:
            out[key[:-2] + "_median_s"] = round(statistics.median(record[key]), 3)
    out["save_gb_per_s"] = round(gb / out["save_median_s"], 3)
    out["load_gb_per_s"] = round(gb / out["load_median_s"], 3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="2", help="comma list of ZeRO stages (default 2)")
    p.add_argument("--impls", default="deepspeed,zerospeed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", default=None, help="append every JSON line to this file")
    p.add_argument("--ckpt-dir", default=None, help="where checkpoints go (default: a temp dir, removed after)")
    add_model_args(p, layers=8, dim=512, heads=8, seq=128, micro_batch=2, steps=2, warmup_steps=0)
    p.set_defaults(ds_torch_adam=True)  # same state tensors either way; skips DeepSpeed's op compile
    args = p.parse_args()
    impls = [i for i in parse_impls(args.impls) if i != "ddp"]
    stages = [int(s) for s in args.stage.split(",")]
    ckpt_dir = args.ckpt_dir or tempfile.mkdtemp(prefix="zerospeed-ckpt-bench-")
    log_dir = Path(tempfile.mkdtemp(prefix="zerospeed-ckpt-bench-logs-"))
    emit({"kind": "meta", "benchmark": "checkpoint", "cpus": os.cpu_count(), "ckpt_dir": ckpt_dir, "log_dir": str(log_dir),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}, args.out)
    results = []
    for stage in stages:
        for impl in impls:
            print(f">>> {impl} z{stage}", file=sys.stderr, flush=True)
            record = _summary(_run(impl, stage, args, ckpt_dir, log_dir))
            emit({"kind": "run", **record}, args.out)
            results.append(record)
    if not args.ckpt_dir:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    by_key = {(r["impl"], r["stage"]): r for r in results}
    for stage in stages:
        ours, peer = by_key.get(("zerospeed", stage)), by_key.get(("deepspeed", stage))
        if ours and peer and ours.get("status") == peer.get("status") == "ok":
            emit({"kind": "ratio", "stage": stage,
                  "save_time_vs_deepspeed": round(ours["save_median_s"] / peer["save_median_s"], 3),
                  "save_time_vs_deepspeed_durable": round(ours["save_median_s"] / peer["save_durable_median_s"], 3),
                  "load_time_vs_deepspeed": round(ours["load_median_s"] / peer["load_median_s"], 3),
                  "bytes_vs_deepspeed": round(ours["bytes"] / peer["bytes"], 3),
                  "consolidate_time_vs_deepspeed": round(ours["consolidate_s"] / peer["consolidate_s"], 3),
                  "async_stall_vs_deepspeed_save": round(ours["async_stall_median_s"] / peer["save_median_s"], 3),
                  "async_stall_vs_own_save": round(ours["async_stall_median_s"] / ours["save_median_s"], 3),
                  "async_stall_plus_step_wait_vs_own_save": round(
                      (ours["async_stall_median_s"] + ours["async_step_wait_median_s"]) / ours["save_median_s"], 3)}, args.out)
    ok = next((r for r in results if r.get("params")), {})
    print(f"\n### Checkpoint save/load: layers={args.layers} dim={args.dim} vocab={args.vocab} "
          f"params={ok.get('params', 0) / 1e6:.1f}M world={args.nproc} dtype={args.dtype} repeats={args.repeats}\n")
    print("| run | checkpoint MB | save s | durable save s | save GB/s | load s | load GB/s | async stall s "
          "| async step wait s | async total s | consolidate s | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if r.get("status") != "ok":
            print(f"| {r['impl']} z{r['stage']} | | | | | | | | | | | {r['status'][:80]} |")
            continue
        durable = r.get("save_durable_median_s", r["save_median_s"])  # zerospeed's save is durable
        print(f"| {r['impl']} z{r['stage']} | {r['bytes'] / 1e6:.0f} | {r['save_median_s']:.2f} | {durable:.2f} "
              f"| {r['save_gb_per_s']:.2f} | {r['load_median_s']:.2f} | {r['load_gb_per_s']:.2f} "
              f"| {r.get('async_stall_median_s', float('nan')):.3f} | {r.get('async_step_wait_median_s', float('nan')):.3f} "
              f"| {r.get('async_total_median_s', float('nan')):.2f} "
              f"| {r['consolidate_s']:.2f} | ok |")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.argv.remove("--worker")
        sys.exit(worker())
    sys.exit(main())
