#!/usr/bin/env python
"""The largest GPT that trains within a per-rank memory budget: ZeRO stage 0 vs stage 3, side by side.

    python benchmarks/zero3_budget.py                           # 2.0 GiB per rank, 2 ranks, fp32 AdamW
    python benchmarks/zero3_budget.py --budget-gib 3 --impls zerospeed-z0,zerospeed-z3
    python benchmarks/zero3_budget.py --impls ddp,zerospeed-z0,zerospeed-z3,fsdp2,deepspeed-z3

For each implementation, GPTs of growing depth (fixed width, `--dim`) are trained for `--steps`
optimizer steps in a fresh `torchrun --nproc_per_node 2` (common.py's worker: same model, data
and AdamW as the other benchmarks), and a model *fits* when the measured peak RSS of every rank
(lifetime VmHWM / ru_maxrss, setup included) stays within the budget. The depth is searched on a
geometric ladder (x1.5 up or down from the ZeRO-formula prediction, re-predicted from each probe's
measured overhead) until a fitting depth and a failing depth bracket the answer, then refined by
bisection (split point interpolated on measured peaks) down to one layer.

Implementations (rows): `ddp` (torch DDP, stage 0), `zerospeed-z0`, `zerospeed-z3` (model built in
`zero.Init`, as a model larger than a rank is built), `zerospeed-z3-noinit` (built whole, then
partitioned by initialize), `fsdp2` (`fully_shard` per block + root, built whole: FSDP2 frees each
block's full weights as it shards it), `deepspeed-z3` (`deepspeed.zero.Init`; slow on CPU).

The ZeRO formula for fp32 Adam: 16 bytes/param at stage 0, 16/N at stage 3, so stage 3 should fit
N times the parameters of stage 0 when model states dominate; the report shows that prediction
(budget minus the measured per-rank overhead, divided by the formula's bytes/param) next to the
measured largest model, and the ratios stage 3 / stage 0 and zerospeed / peers.
Run it once as is and once with `MALLOC_MMAP_THRESHOLD_=1048576` in the environment: with glibc's
default allocator, heap retention eats stage 3's savings at this scale (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# row -> (impl, stage, built inside zero.Init)
ROWS = {
    "ddp": ("ddp", 0, False),
    "zerospeed-z0": ("zerospeed", 0, False),
    "zerospeed-z3": ("zerospeed", 3, True),
    "zerospeed-z3-noinit": ("zerospeed", 3, False),
    "fsdp2": ("fsdp2", 3, False),
    "deepspeed-z3": ("deepspeed", 3, True),
}
DEFAULT_ROWS = "ddp,zerospeed-z0,zerospeed-z3,fsdp2"
LADDER = 1.5
MIB = 2**20


def gpt_params(layers: int, args: argparse.Namespace) -> int:
    """Parameters of examples/gpt/model.py's GPT (tied head, no biases, LayerNorms with bias)."""
    d = args.dim
    per_block = 12 * d * d + 4 * d  # qkv 3d^2 + proj d^2 + MLP 8d^2, two LayerNorms
    return layers * per_block + (args.vocab + args.seq) * d + 2 * d


def formula_bytes_per_param(stage: int, world: int) -> float:
    return common.theory_bytes_per_param(stage, "fp32", world)


class Search:
    """Finds the largest depth whose measured peak RSS per rank fits the budget, for one row."""

    def __init__(self, row: str, args: argparse.Namespace, log_dir: Path) -> None:
        self.row = row
        self.impl, self.stage, self.zero_init = ROWS[row]
        self.args = args
        self.log_dir = log_dir
        self.budget_mb = args.budget_gib * 1024
        self.bytes_per_param = formula_bytes_per_param(self.stage, args.nproc)
        self.overhead_mb = args.overhead_guess_mib  # per-rank RSS beyond the formula's model states
        self.probes: dict[int, dict] = {}

    # -- one probe ------------------------------------------------------------------------
    def probe(self, layers: int) -> dict:
        if layers in self.probes:
            return self.probes[layers]
        args = copy.copy(self.args)
        args.layers = layers
        args.zero_init = self.zero_init
        tag = f"{self.row}-L{layers}"
        print(f">>> {tag} ({gpt_params(layers, args) / 1e6:.1f}M params)", file=sys.stderr, flush=True)
        if self.impl == "fsdp2":
            import zero3

            record = zero3._run("fsdp2", "none", args, self.log_dir, tag)
        else:
            record = common.run_worker(self.impl, self.stage, "none", args, self.log_dir, tag, args.timeout)
        ok = record.get("status") == "ok"
        peak = max(record["peak_rss_mb_per_rank"]) if ok else None
        result = {"kind": "probe", "row": self.row, "layers": layers, "params": gpt_params(layers, args),
                  "status": record.get("status"), "fits": bool(ok and peak <= self.budget_mb),
                  "peak_rss_mb_per_rank": record.get("peak_rss_mb_per_rank"),
                  "setup_peak_rss_mb_per_rank": record.get("setup_peak_rss_mb_per_rank"),
                  "train_peak_rss_mb_per_rank": record.get("train_peak_rss_mb_per_rank"),
                  "base_rss_mb_per_rank": record.get("base_rss_mb_per_rank"),
                  "model_state_mb_per_rank": record.get("model_state_mb_per_rank"),
                  "step_time_s": record.get("step_time_s"), "final_loss": record.get("final_loss"),
                  "wall_s": record.get("wall_s"), "log": record.get("log")}
        if ok:  # what this rank holds beyond the formula's model states: base, activations, buffers
            self.overhead_mb = peak - self.bytes_per_param * result["params"] / MIB
            result["overhead_mb"] = round(self.overhead_mb, 1)
        common.emit(result, self.args.out)
        self.probes[layers] = result
        return result

    def predict(self) -> int:
        """Depth the ZeRO formula allows with the last measured overhead."""
        room = (self.budget_mb - self.overhead_mb) * MIB / self.bytes_per_param
        fixed = gpt_params(0, self.args)
        return max(1, int((room - fixed) // (gpt_params(1, self.args) - fixed)))

    # -- the search -----------------------------------------------------------------------
    def run(self, start: int | None = None) -> dict:
        limit = self.args.max_layers
        layers = min(limit, start or self.predict())
        fits, fails = None, None
        while fits is None or fails is None:  # geometric ladder from the prediction
            if self.probe(layers)["fits"]:
                fits = layers
                if layers >= limit:
                    break
                layers = min(limit, max(layers + 1, min(self.predict(), math.ceil(layers * LADDER))))
            else:
                fails = layers
                if layers <= 1:
                    break
                layers = max(1, min(layers - 1, max(self.predict(), math.floor(layers / LADDER))))
            if fits is not None and fails is not None and fails < fits:  # noisy edge: keep the larger fit
                fails = None
        while fits is not None and fails is not None and fails - fits > 1:  # bisection
            layers = self._split(fits, fails)
            if self.probe(layers)["fits"]:
                fits = layers
            else:
                fails = layers
        return self.summary(fits, fails)

    def _split(self, fits: int, fails: int) -> int:
        """Between the bracket's ends: where the measured peaks cross the budget, else the midpoint."""
        low, high = self.probes[fits], self.probes[fails]
        if high.get("peak_rss_mb_per_rank") and fails - fits > 2:
            peak_low, peak_high = max(low["peak_rss_mb_per_rank"]), max(high["peak_rss_mb_per_rank"])
            if peak_high > peak_low:
                guess = fits + (self.budget_mb - peak_low) / (peak_high - peak_low) * (fails - fits)
                return min(fails - 1, max(fits + 1, int(guess)))
        return (fits + fails) // 2

    def summary(self, fits: int | None, fails: int | None) -> dict:
        best = self.probes.get(fits) if fits is not None else None
        overhead = best["overhead_mb"] if best else None
        predicted = None
        if overhead is not None:  # the formula's largest model with this row's measured overhead
            predicted = int((self.budget_mb - overhead) * MIB / self.bytes_per_param)
        return {"kind": "largest", "row": self.row, "impl": self.impl, "stage": self.stage, "zero_init": self.zero_init,
                "budget_mib": round(self.budget_mb), "largest_layers": fits, "smallest_failing_layers": fails,
                "largest_params": best["params"] if best else 0,
                "peak_rss_mb_per_rank": best["peak_rss_mb_per_rank"] if best else None,
                "setup_peak_rss_mb_per_rank": best["setup_peak_rss_mb_per_rank"] if best else None,
                "overhead_mb": overhead, "formula_bytes_per_param": self.bytes_per_param,
                "formula_params_pure": int(self.budget_mb * MIB / self.bytes_per_param),
                "formula_params_with_overhead": predicted,
                "probes": len(self.probes), "probe_wall_s": round(sum(p["wall_s"] or 0 for p in self.probes.values()), 1),
                "final_loss": best["final_loss"] if best else None}


def print_table(results: list[dict], args: argparse.Namespace, meta: dict) -> None:
    by_row = {r["row"]: r for r in results}
    z0 = by_row.get("zerospeed-z0") or by_row.get("ddp")
    print(f"\n### zero3_budget.py: {args.budget_gib:g} GiB per rank, world={args.nproc}, fp32 AdamW, GPT dim={args.dim} "
          f"heads={args.heads} vocab={args.vocab} seq={args.seq} micro_batch={args.micro_batch} steps={args.steps}, "
          f"{meta['date_utc']}\n")
    print("| row | largest layers | params | peak RSS MB/rank (max) | setup peak MB | overhead MB | "
          "formula B/param | formula params (with overhead) | vs stage-0 row | probes (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        peak = max(r["peak_rss_mb_per_rank"]) if r["peak_rss_mb_per_rank"] else None
        setup = max(r["setup_peak_rss_mb_per_rank"]) if r.get("setup_peak_rss_mb_per_rank") else None
        vs = f"{r['largest_params'] / z0['largest_params']:.2f}x" if z0 and z0["largest_params"] else ""
        formula = f"{r['formula_params_with_overhead'] / 1e6:.1f}M" if r["formula_params_with_overhead"] else "n/a"
        print(f"| {r['row']} | {r['largest_layers']} | {r['largest_params'] / 1e6:.1f}M | {common._fmt(peak)} "
              f"| {common._fmt(setup)} | {common._fmt(r['overhead_mb'])} | {r['formula_bytes_per_param']:g} | {formula} "
              f"| {vs} | {r['probes']} ({r['probe_wall_s']:.0f}) |")
    ratios = {"kind": "ratio"}
    pairs = [("zerospeed-z3", "zerospeed-z0"), ("fsdp2", "ddp"), ("zerospeed-z3", "fsdp2"),
             ("zerospeed-z3", "deepspeed-z3"), ("zerospeed-z0", "ddp"), ("zerospeed-z3-noinit", "zerospeed-z3")]
    for a, b in pairs:
        if a in by_row and b in by_row and by_row[b]["largest_params"]:
            ratios[f"params_{a}_vs_{b}"] = round(by_row[a]["largest_params"] / by_row[b]["largest_params"], 3)
    ratios["formula_stage3_vs_stage0"] = formula_bytes_per_param(0, args.nproc) / formula_bytes_per_param(3, args.nproc)
    common.emit(ratios, args.out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-gib", type=float, default=2.0, help="per-rank peak RSS budget (GiB)")
    p.add_argument("--impls", default=DEFAULT_ROWS, help=f"comma list of rows: {','.join(ROWS)}")
    p.add_argument("--max-layers", type=int, default=128)
    p.add_argument("--start-layers", type=int, default=None,
                   help="first depth probed for every row (default: the ZeRO-formula prediction)")
    p.add_argument("--overhead-guess-mib", type=float, default=600.0,
                   help="per-rank RSS beyond model states assumed for the first prediction (torch + gloo ~0.35 GB)")
    common.add_model_args(p, layers=0, dim=768, heads=12, seq=64, micro_batch=2, steps=2, warmup_steps=1)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=int, default=600, help="seconds per probe before it is killed")
    p.add_argument("--out", default=None, help="append every JSON line to this file")
    p.add_argument("--log-dir", default=None, help="per-probe logs (default: a new temp dir)")
    args = p.parse_args()
    rows = [r.strip() for r in args.impls.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise SystemExit(f"--impls: unknown {bad}; allowed: {','.join(ROWS)}")
    if args.dtype != "fp32":
        raise SystemExit("--dtype: the budget search is for fp32 Adam (16 bytes/param at stage 0)")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="zerospeed-budget-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "meta", "benchmark": "zero3_budget", "budget_gib": args.budget_gib, "rows": rows,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "log_dir": str(log_dir),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default (dynamic)"),
            "model": {k: getattr(args, k) for k in common.MODEL_FLAGS if k != "layers"}}
    if "deepspeed-z3" in rows:
        meta["deepspeed_prebuild"] = common.prebuild_deepspeed_ops(False, log_dir)
    common.emit(meta, args.out)
    started = time.perf_counter()
    results, found = [], {}
    for row in rows:
        search = Search(row, args, log_dir)
        # start a stage's search from what the same stage already found (fewer probes)
        start = args.start_layers or found.get(ROWS[row][1])
        results.append(search.run(start))
        common.emit(results[-1], args.out)
        if results[-1]["largest_layers"]:
            found.setdefault(ROWS[row][1], results[-1]["largest_layers"])
    meta["load_average_end"] = os.getloadavg()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    print_table(results, args, meta)
    print(f"\nwall {meta['wall_s']:.0f} s; load average {meta['load_average'][0]:.1f} at start, "
          f"{meta['load_average_end'][0]:.1f} at end; glibc mmap threshold: {meta['malloc_mmap_threshold']}")
    return 0 if all(r["largest_layers"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
