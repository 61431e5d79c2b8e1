#!/usr/bin/env python
"""ZeRO stage 3 side by side: zerospeed stage 3 vs DeepSpeed stage 3 vs torch FSDP2, in one run.

    python benchmarks/zero3.py                                   # 12 x 1024 GPT (159.6M), 3 steps
    python benchmarks/zero3.py --layers 4 --dim 256 --steps 6    # a quick look
    python benchmarks/zero3.py --impls zerospeed,fsdp2 --dtype bf16

FSDP2 is `torch.distributed.fsdp.fully_shard` on every transformer block and on the root
(its recommended wrapping), torch AdamW, gloo on CPU. The worker, data, model and figures are
`common.py`'s (one `torchrun` per implementation, JSON lines, a markdown table); this file adds
the FSDP2 trainer and reports zerospeed's ratios against both peers, and model-state bytes per
rank against the ZeRO formula (fp32 Adam: 16 bytes/param / N; bf16: (2+2+12) / N).

Peak RSS on CPU depends on glibc's allocator as much as on what each implementation holds: prefix
`MALLOC_MMAP_THRESHOLD_=1048576` to compare what they hold (benchmarks/README.md, zero3.py section).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

IMPLS = ("zerospeed", "deepspeed", "fsdp2")


# --------------------------------------------------------------------------- worker: the FSDP2 trainer


class _TorchRuntime:
    """What common.worker_main needs from a runtime module, for plain torch (FSDP2)."""

    @property
    def __version__(self) -> str:
        import torch

        return torch.__version__

    @staticmethod
    def init_distributed(dist_backend: str = "gloo", timeout=None) -> None:
        import torch.distributed as dist

        dist.init_process_group(dist_backend, timeout=timeout)


def _fsdp2_trainer(args, model, world):
    import contextlib

    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    bf16 = args.dtype == "bf16"
    options = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)} if bf16 else {}
    for block in model.blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    snapshot: dict = {}

    def train_step(micro_batches, measure=False):
        total = 0.0
        for i, (x, y) in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            model.set_requires_gradient_sync(last)
            with contextlib.nullcontext():
                loss = model(x, y)
                (loss / len(micro_batches)).backward()
            total += loss.item()
        if measure:  # after the last backward, before the step: every model state is alive
            counter = common.StorageCounter()
            for p in model.parameters():
                counter.add("params", p.to_local() if hasattr(p, "to_local") else p.data)
            for p in model.parameters():
                if p.grad is not None:
                    counter.add("grads", p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)
            for state in opt.state.values():
                for value in state.values():
                    counter.add("optimizer_states", value.to_local() if hasattr(value, "to_local") else value)
            snapshot.update(counter.bytes)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    return train_step, lambda: dict(snapshot), {"optimizer": "torch.optim.AdamW", "wrapping": "fully_shard per block + root"}


def worker(argv: list[str]) -> int:
    """torchrun entry: common.worker_main with an 'fsdp2' implementation added."""
    common.IMPLS = tuple(dict.fromkeys((*common.IMPLS, "fsdp2")))
    build, import_runtime = common._build_trainer, common._import_runtime
    common._build_trainer = lambda args, model, world: (
        _fsdp2_trainer(args, model, world) if args.impl == "fsdp2" else build(args, model, world))
    common._import_runtime = lambda impl: _TorchRuntime() if impl == "fsdp2" else import_runtime(impl)
    return common.worker_main(argv)


# --------------------------------------------------------------------------- driver


def _run(impl: str, offload: str, args, log_dir: Path, tag: str) -> dict:
    if impl != "fsdp2":
        return common.run_worker(impl, 3, offload, args, log_dir, tag, args.timeout)
    # same as common.run_worker, but this file is the torchrun target
    import json
    import subprocess
    import time

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           str(Path(__file__).resolve()), "--worker", "--impl", "fsdp2", "--stage", "3", "--offload", "none",
           "--tag", tag, *common.model_argv(args)]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=common.driver_env(), capture_output=True, text=True, timeout=args.timeout)
        out = res.stdout + res.stderr
    except subprocess.TimeoutExpired:
        out = "timeout"
    (log_dir / f"{tag}.log").write_text(" ".join(cmd) + "\n" + out)
    for line in out.splitlines():
        if line.startswith(common.RESULT_PREFIX):
            record = json.loads(line[len(common.RESULT_PREFIX):])
            record.update(wall_s=round(time.perf_counter() - t0, 1), log=str(log_dir / f"{tag}.log"))
            return record
    return {"impl": impl, "stage": 3, "offload": "none", "dtype": args.dtype, "tag": tag,
            "status": "failed: " + " | ".join(out.strip().splitlines()[-3:])[-1500:]}


def _peak(record: dict) -> float:
    return max(record["peak_rss_mb_per_rank"])


def _summary(results: dict[str, dict], args) -> None:
    ours = results.get("zerospeed")
    print(f"\n### ZeRO-3: layers={args.layers} dim={args.dim} seq={args.seq} micro_batch={args.micro_batch} "
          f"dtype={args.dtype} world={args.nproc} steps={args.steps} (warmup {args.warmup_steps})\n")
    print("| run | tokens/s | step s | initialize s | peak RSS MB/rank | model states MB/rank | theory MB/rank "
          "| final loss | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for impl, r in results.items():
        ok = r.get("status") == "ok"
        states = r.get("model_state_mb_per_rank") or []
        print(f"| {impl} z3 | {r.get('tokens_per_s', '')} | {r.get('step_time_s', '')} | {r.get('initialize_s', '')} "
              f"| {'/'.join(f'{m:.0f}' for m in r['peak_rss_mb_per_rank']) if ok else ''} "
              f"| {'/'.join(f'{m:.1f}' for m in states) if ok else ''} | {r.get('theory_model_state_mb_per_rank', '')} "
              f"| {r.get('final_loss', '')} | {str(r.get('status'))[:60]} |")
    if not ours or ours.get("status") != "ok":
        return
    ratios = {"kind": "ratio", "row": "zerospeed z3"}
    for peer in ("deepspeed", "fsdp2"):
        r = results.get(peer)
        if r and r.get("status") == "ok":
            ratios[f"tokens_per_s_vs_{peer}"] = round(ours["tokens_per_s"] / r["tokens_per_s"], 3)
            ratios[f"peak_rss_vs_{peer}"] = round(_peak(ours) / _peak(r), 3)
    states = ours.get("model_state_mb_per_rank")
    if states:
        ratios["model_states_vs_theory"] = round(max(states) / ours["theory_model_state_mb_per_rank"], 3)
    common.emit(ratios, args.out)


def main() -> int:
    if "--worker" in sys.argv:
        return worker([a for a in sys.argv[1:] if a != "--worker"])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(p, layers=12, dim=1024, heads=16, seq=128, micro_batch=2, steps=3, warmup_steps=1)
    common.add_driver_args(p)
    p.set_defaults(impls=",".join(IMPLS))
    args = p.parse_args()
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"--impls: unknown {bad}; allowed: {','.join(IMPLS)}")
    import tempfile

    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="zerospeed-zero3-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if "deepspeed" in impls:
        common.prebuild_deepspeed_ops(False, log_dir)
    results = {}
    for impl in impls:
        print(f">>> {impl} z3", file=sys.stderr, flush=True)
        results[impl] = _run(impl, "none", args, log_dir, f"{impl}-z3")
        common.emit({"kind": "run", **results[impl]}, args.out)
    _summary(results, args)
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
