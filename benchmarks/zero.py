#!/usr/bin/env python
"""ZeRO stages side by side: torch DDP vs DeepSpeed stage N vs zerospeed stage N, in one run.

    python benchmarks/zero.py                         # stages 1, 2, 2+CPU offload at the 159.6M probe shape
    python benchmarks/zero.py --stage 3               # stage 3 only
    python benchmarks/zero.py --stage 1,2,2+offload,3 --impls ddp,zerospeed

The default shape is the peers' memory probe (12 layers x 1024, vocab 8192: 159.6M params, few
steps), where model states dominate RSS and the stages' memory differences show. Reports tokens/s
ratios, peak RSS per rank, and model-state bytes per rank against the ZeRO formula (fp32 Adam
4+4+8 bytes/param, mixed precision 2+2+12, partitioned by stage over the ranks).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_driver_args, add_model_args, parse_impls, run_rows  # noqa: E402


def parse_stages(text: str) -> list[tuple[int, str]]:
    stages = []
    for item in text.split(","):
        item = item.strip()
        offload = "cpu" if item.endswith("+offload") else "none"
        number = item.removesuffix("+offload")
        if number not in ("0", "1", "2", "3"):
            raise SystemExit(f"--stage: {item!r} is not one of 0..3 (optionally with +offload)")
        stages.append((int(number), offload))
    return stages


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="1,2,2+offload",
                   help="comma list of stages, '+offload' adds CPU optimizer offload (default 1,2,2+offload)")
    p.add_argument("--offload", choices=["none", "cpu"], default=None,
                   help="force offload on (cpu) or off (none) for every listed stage")
    add_model_args(p, layers=12, dim=1024, heads=16, seq=128, micro_batch=2, steps=3, warmup_steps=1)
    add_driver_args(p)
    args = p.parse_args()
    stages = [(s, args.offload or o) for s, o in parse_stages(args.stage)]
    impls = parse_impls(args.impls)
    rows = [("ddp", 0, "none")] if "ddp" in impls else []
    rows += [(impl, s, o) for s, o in stages for impl in impls if impl != "ddp"]
    label = ", ".join(f"{s}{'+offload' if o == 'cpu' else ''}" for s, o in stages)
    results = run_rows(rows, args, f"ZeRO stages {label}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
