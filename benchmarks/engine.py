#!/usr/bin/env python
"""Engine overhead at one ZeRO stage (default 0): torch DDP vs DeepSpeed vs zerospeed, in one run.

    python benchmarks/engine.py                       # ddp, deepspeed z0, zerospeed z0
    python benchmarks/engine.py --impls ddp,deepspeed --steps 6 --repeats 2

Each peer runs in its own `torchrun --nproc_per_node 2` (gloo, CPU, 1 thread per rank), one after
the other. Prints one JSON line per result (import times, each run, zerospeed/peer ratios) and a
markdown table at the end. The model, data and optimizer match /work/shared/bench/train_gpt.py
(default shape: its 29.5M-param matrix model).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_driver_args, add_model_args, parse_impls, run_rows  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", type=int, choices=[0, 1, 2, 3], default=0)
    p.add_argument("--offload", choices=["none", "cpu"], default="none")
    add_model_args(p, layers=8, dim=512, heads=8, seq=256, micro_batch=4, steps=10, warmup_steps=3)
    add_driver_args(p)
    args = p.parse_args()
    rows = [("ddp", 0, "none") if impl == "ddp" else (impl, args.stage, args.offload)
            for impl in parse_impls(args.impls)]
    results = run_rows(rows, args, f"engine overhead, ZeRO stage {args.stage}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
