"""Shared pieces of the side-by-side benchmarks: the per-rank worker and the driver that runs peers.

Run as a script under torchrun it is the worker: it trains the example GPT
(examples/gpt/model.py) on the peers' synthetic Markov-chain tokens with one implementation
(torch DDP, DeepSpeed, or zerospeed through `import zerospeed as deepspeed`) and prints one
JSON line on rank 0, prefixed with `BENCH_RESULT `. Model shape, init, data and optimizer match
/work/shared/bench/train_gpt.py, so figures are comparable with the peers' recorded results.

Imported, it is the driver library that `engine.py` and `zero.py` use: launch each peer in a
fresh `torchrun --nproc_per_node 2` (sequentially), measure import times in fresh interpreters,
and print JSON lines, ratios and a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
IMPLS = ("ddp", "deepspeed", "zerospeed")

# --------------------------------------------------------------------------- shared flags


def add_model_args(p: argparse.ArgumentParser, *, layers: int, dim: int, heads: int, seq: int,
                   micro_batch: int, steps: int, warmup_steps: int) -> None:
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--dim", type=int, default=dim)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=seq)
    p.add_argument("--micro-batch", type=int, default=micro_batch)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup-steps", type=int, default=warmup_steps, help="steps left out of the median")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ds-torch-adam", action="store_true",
                   help="DeepSpeed: optimizer.params.torch_adam=true (torch AdamW instead of its JIT-built CPU fused Adam)")
    p.add_argument("--ds-config-extra", default=None, help="JSON deep-merged into the deepspeed/zerospeed config")


MODEL_FLAGS = ("layers", "dim", "heads", "vocab", "seq", "micro_batch", "grad_accum", "steps",
               "warmup_steps", "dtype", "seed", "lr", "weight_decay")


def model_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    for name in MODEL_FLAGS:
        argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.ds_torch_adam:
        argv.append("--ds-torch-adam")
    if args.ds_config_extra:
        argv += ["--ds-config-extra", args.ds_config_extra]
    if getattr(args, "zero_init", False):
        argv.append("--zero-init")
    return argv


# --------------------------------------------------------------------------- theory


def theory_bytes_per_param(stage: int, dtype: str, world: int) -> float:
    """ZeRO-paper model states per rank: fp32 Adam 4+4+8, mixed 2+2+12, partitioned by stage over N ranks."""
    p, g, o = (2, 2, 12) if dtype == "bf16" else (4, 4, 8)
    return {0: p + g + o, 1: p + g + o / world, 2: p + (g + o) / world}.get(stage, (p + g + o) / world)


# --------------------------------------------------------------------------- worker: data and memory


def make_batches(vocab: int, seq: int, micro_batch: int, grad_accum: int, steps: int, seed: int,
                 world: int, rank: int) -> list[list[tuple]]:
    """The peers' synthetic tokens: a fixed sparse Markov chain (4 successors per token).

    The global micro-batch of (step, micro) depends only on (seed, step, micro); rank r takes its
    rows, so every implementation sees the same data. Best loss is ln 4. Returns (x, y) pairs.
    """
    import torch

    g = torch.Generator().manual_seed(seed + 7919)
    successors = torch.randint(0, vocab, (vocab, 4), generator=g)
    global_rows = micro_batch * world
    out = []
    for step in range(steps):
        per_step = []
        for micro in range(grad_accum):
            g = torch.Generator().manual_seed(seed * 1_000_003 + step * 10_007 + micro * 101 + 17)
            toks = torch.empty(global_rows, seq + 1, dtype=torch.long)
            toks[:, 0] = torch.randint(0, vocab, (global_rows,), generator=g)
            choice = torch.randint(0, 4, (global_rows, seq), generator=g)
            for t in range(seq):
                toks[:, t + 1] = successors[toks[:, t], choice[:, t]]
            mine = toks[rank * micro_batch:(rank + 1) * micro_batch]
            per_step.append((mine[:, :-1].contiguous(), mine[:, 1:].contiguous()))
        out.append(per_step)
    return out


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.M)
    return int(m.group(1)) / 1024.0 if m else float("nan")


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StorageCounter:
    """Adds up tensor bytes by category, counting each underlying storage once."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = {}

    def add(self, category: str, obj, depth: int = 2) -> None:
        import torch

        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            key = storage.data_ptr()
            if key and key not in self.seen:
                self.seen.add(key)
                self.bytes[category] = self.bytes.get(category, 0) + storage.nbytes()
        elif depth > 0 and isinstance(obj, (list, tuple)):
            for item in obj:
                self.add(category, item, depth - 1)
        elif depth > 0 and isinstance(obj, dict):
            for item in obj.values():
                self.add(category, item, depth - 1)

    def add_object_attributes(self, category: str, obj) -> None:
        """Tensors held (directly or in lists/dicts) by an object's attributes: buffers, flat partitions."""
        for value in vars(obj).values():
            self.add(category, value, depth=3)


def torch_model_state_bytes(model, optimizer) -> dict[str, int]:
    counter = StorageCounter()
    for p in model.parameters():
        counter.add("params", p.data)
    for p in model.parameters():
        counter.add("grads", p.grad)
    for state in optimizer.state.values():
        counter.add("optimizer_states", state)
    return counter.bytes


def deepspeed_model_state_bytes(engine) -> dict[str, int]:
    """Allocated tensor bytes reachable from DeepSpeed's engine and ZeRO optimizer.

    params: module parameters (and their stage-3 shards `ds_tensor`); optimizer_states: the
    inner optimizer's state; master: the inner optimizer's parameters that are not module
    parameters (DeepSpeed's fp32 partitions); other: every other tensor its ZeRO optimizer
    holds (gradient partitions, buckets). Allocated bytes: a bucket never written counts in full.
    """
    counter = StorageCounter()
    module = engine.module
    for p in module.parameters():
        counter.add("params", p.data)
        counter.add("params", getattr(p, "ds_tensor", None))
    for p in module.parameters():
        counter.add("grads", p.grad)
    wrapper = engine.optimizer
    inner = getattr(wrapper, "optimizer", wrapper)
    for state in inner.state.values():
        counter.add("optimizer_states", state)
    for group in inner.param_groups:
        for p in group["params"]:
            counter.add("master", p.data)
            counter.add("grads", p.grad)
    if wrapper is not inner:
        counter.add_object_attributes("other", wrapper)
    return counter.bytes


# --------------------------------------------------------------------------- worker


def worker_parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="benchmark worker (run under torchrun)")
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--stage", type=int, choices=[0, 1, 2, 3], default=0)
    p.add_argument("--offload", choices=["none", "cpu"], default="none")
    p.add_argument("--tag", default="")
    p.add_argument("--zero-init", action="store_true",
                   help="stage 3 (zerospeed, deepspeed): build the model inside zero.Init, so no rank ever holds it whole")
    add_model_args(p, layers=8, dim=512, heads=8, seq=256, micro_batch=4, steps=12, warmup_steps=3)
    return p.parse_args(argv)


def deepspeed_config(args: argparse.Namespace, world: int) -> dict:
    opt_params = {"lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.999], "eps": 1e-8}
    if args.ds_torch_adam:
        opt_params["torch_adam"] = True
    zero = {"stage": args.stage}
    if args.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    cfg = {
        "train_batch_size": args.micro_batch * args.grad_accum * world,
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": args.grad_accum,
        "optimizer": {"type": "AdamW", "params": opt_params},
        "zero_optimization": zero,
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if args.dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    if args.ds_config_extra:
        _deep_merge(cfg, json.loads(args.ds_config_extra))
    return cfg


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v


def _build_trainer(args, model, world):
    """Returns (train_step(micro_batches) -> summed loss, model_state_bytes() -> dict | 'n/a', info)."""
    import torch

    bf16 = args.dtype == "bf16"
    if args.impl == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        snapshot = {}

        def train_step(micro_batches, measure=False):
            total = 0.0
            for i, (x, y) in enumerate(micro_batches):
                last = i == len(micro_batches) - 1
                with (contextlib.nullcontext() if last else net.no_sync()), \
                        torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = net(x, y)
                    (loss / len(micro_batches)).backward()
                total += loss.item()
            if measure:  # after the last backward, before the step: every model state is alive
                snapshot.update(torch_model_state_bytes(model, opt))
            opt.step()
            opt.zero_grad(set_to_none=True)
            return total

        return train_step, lambda: dict(snapshot), {"optimizer": "torch.optim.AdamW"}

    ds = _import_runtime(args.impl)
    cfg = deepspeed_config(args, world)
    engine, _, _, _ = ds.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    inner = getattr(engine.optimizer, "optimizer", None)
    info = {"ds_config": cfg, "ds_optimizer": type(engine.optimizer).__name__,
            "ds_basic_optimizer": type(inner).__name__ if inner is not None else None}
    snapshot = {}

    def train_step(micro_batches, measure=False):
        total = 0.0
        for i, (x, y) in enumerate(micro_batches):
            loss = engine(x, y)
            engine.backward(loss)
            if measure and i == len(micro_batches) - 1:  # after the last backward, before the step
                snapshot.update(engine_model_state_bytes(args.impl, engine))
            engine.step()
            total += loss.item()
        return total

    return train_step, lambda: dict(snapshot), info


def engine_model_state_bytes(impl: str, engine) -> dict:
    """DeepSpeed: reachable tensor bytes. zerospeed: its own `engine.memory_report()` when it has one."""
    if impl == "deepspeed":
        return deepspeed_model_state_bytes(engine)
    if hasattr(engine, "memory_report"):
        return {k: int(v) for k, v in engine.memory_report().items() if isinstance(v, (int, float))}
    return {"n/a": True}


def _import_runtime(impl: str):
    if impl == "deepspeed":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        return deepspeed
    import zerospeed
    return zerospeed


def build_model(args: argparse.Namespace, GPT, GPTConfig):
    """The benchmark GPT; at stage 3 with `--zero-init`, built partitioned inside the runtime's zero.Init.

    Inside zero.Init the GPT's own residual-projection init (`nn.init.normal_` on each such
    parameter after construction) would write into empty placeholders, so it is repeated on
    gathered parameters: same random stream, same weights as a whole-model build.
    """
    import math

    import torch

    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab, seq_len=args.seq, layers=args.layers, dim=args.dim, heads=args.heads)
    if not (getattr(args, "zero_init", False) and args.impl in ("zerospeed", "deepspeed") and args.stage == 3):
        return GPT(config)
    import torch.distributed as dist

    ds = _import_runtime(args.impl)
    with ds.zero.Init(config_dict_or_path=deepspeed_config(args, dist.get_world_size())):
        model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * args.layers)
    for name, param in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.out.weight")):
            with ds.zero.GatheredParameters([param], modifier_rank=0):
                torch.nn.init.normal_(param, mean=0.0, std=residual_std)
    return model


def count_params(model) -> int:
    """Unique parameters, counting a stage-3 partitioned one by its full size (`ds_numel`)."""
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def worker_main(argv=None) -> int:
    args = worker_parse(argv)
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(ROOT / "examples" / "gpt"))
    from model import GPT, GPTConfig

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    record = {"impl": args.impl, "stage": 0 if args.impl == "ddp" else args.stage,
              "zero_init": bool(args.zero_init),
              "offload": args.offload if args.impl != "ddp" else "none", "dtype": args.dtype, "tag": args.tag,
              **{k: getattr(args, k) for k in MODEL_FLAGS}, "status": "ok"}
    try:
        timeout = datetime.timedelta(seconds=900)
        if args.impl == "ddp":
            dist.init_process_group("gloo", timeout=timeout)
        else:
            ds = _import_runtime(args.impl)
            record["version"] = getattr(ds, "__version__", "?")
            ds.init_distributed(dist_backend="gloo", timeout=timeout)
        rank, world = dist.get_rank(), dist.get_world_size()
        base_rss = _ru_maxrss_mb()
        batches = make_batches(args.vocab, args.seq, args.micro_batch, args.grad_accum, args.steps,
                               args.seed, world, rank)
        model = build_model(args, GPT, GPTConfig)
        params = count_params(model)
        t0 = time.perf_counter()
        train_step, state_bytes, info = _build_trainer(args, model, world)
        dist.barrier()
        record["initialize_s"] = round(time.perf_counter() - t0, 3)
        record.update(info)
        setup_peak = max(_ru_maxrss_mb(), _vm_hwm_mb())
        hwm_reset = _reset_hwm()

        losses, times = [], []
        for step in range(args.steps):
            t = time.perf_counter()
            local = train_step(batches[step], measure=step == args.steps - 1)
            loss = torch.tensor([local], dtype=torch.float64)
            dist.all_reduce(loss)
            times.append(time.perf_counter() - t)
            losses.append(loss.item() / (args.grad_accum * world))

        train_peak = _vm_hwm_mb() if hwm_reset else float("nan")
        peak = max(setup_peak, _ru_maxrss_mb(), train_peak if hwm_reset else 0.0)
        measured = state_bytes()
        if measured.get("n/a"):
            measured, measured_total = "n/a", -1.0
        else:  # memory_report() may carry its own "total"; never count it twice
            measured_total = float(measured.get("total", sum(measured.values())))
        mem = torch.tensor([[peak, train_peak, base_rss, measured_total, setup_peak]], dtype=torch.float64)
        gathered = [torch.zeros_like(mem) for _ in range(world)]
        dist.all_gather(gathered, mem)
        per_rank = torch.cat(gathered).tolist()

        stage = record["stage"]
        bpp = theory_bytes_per_param(stage, args.dtype if args.impl != "ddp" else "fp32", world)
        timed = times[args.warmup_steps:] or times
        median = statistics.median(timed)
        tokens_per_step = world * args.micro_batch * args.grad_accum * args.seq
        record.update({
            "world_size": world, "params": params, "global_tokens_per_step": tokens_per_step,
            "tokens_per_s": round(tokens_per_step / median, 2), "step_time_s": round(median, 4),
            "step_times_s": [round(t, 4) for t in times],
            "peak_rss_mb_per_rank": [round(r[0], 1) for r in per_rank],
            "train_peak_rss_mb_per_rank": [round(r[1], 1) for r in per_rank] if hwm_reset else None,
            "base_rss_mb_per_rank": [round(r[2], 1) for r in per_rank],
            "setup_peak_rss_mb_per_rank": [round(r[4], 1) for r in per_rank],
            "theory_model_state_bytes_per_param": bpp,
            "theory_model_state_mb_per_rank": round(bpp * params / 2**20, 1),
            "model_state_bytes_rank0": measured,
            "model_state_mb_per_rank": (None if measured == "n/a"
                                        else [round(r[3] / 2**20, 1) for r in per_rank]),
            "final_loss": losses[-1], "losses": losses,
        })
        code = 0
    except Exception as e:  # every rank reports; rank 0's line carries the error
        sys.stderr.write(f"[rank {rank}] {traceback.format_exc()}\n")
        record["status"] = f"{type(e).__name__}: {e}"[:1500]
        code = 1
    if rank == 0:
        print(RESULT_PREFIX + json.dumps(record), flush=True)
    if code == 0:
        dist.barrier()
        dist.destroy_process_group()
    return code


# --------------------------------------------------------------------------- driver


def driver_env() -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "ZEROSPEED_ACCELERATOR": "cpu",
                "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def prebuild_deepspeed_ops(offload: bool, log_dir: Path) -> str:
    """Build/load DeepSpeed's JIT CPU ops once, outside every timing (cached in ~/.cache/torch_extensions)."""
    names = ["FusedAdamBuilder", "ShareMemCommBuilder"] + (["CPUAdamBuilder"] if offload else [])
    code = ("from deepspeed.accelerator import get_accelerator\nimport sys\nacc = get_accelerator()\n"
            "for name in sys.argv[1:]:\n    b = acc.create_op_builder(name)\n    b.load() if b else None\n"
            "    print(name, 'ok', flush=True)\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *names], env=driver_env(), capture_output=True, text=True)
    (log_dir / "deepspeed-prebuild.log").write_text(res.stdout + res.stderr)
    status = "ok" if res.returncode == 0 else f"failed (exit {res.returncode})"
    return f"{status} in {time.perf_counter() - t0:.1f}s: {' '.join(names)}"


def run_worker(impl: str, stage: int, offload: str, args: argparse.Namespace, log_dir: Path,
               tag: str, timeout_s: int) -> dict:
    """One torchrun (2 processes) of the worker; returns rank 0's record or a failure record."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           str(Path(__file__).resolve()), "--impl", impl, "--stage", str(stage), "--offload", offload,
           "--tag", tag, *model_argv(args)]
    log = log_dir / f"{tag}.log"
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=driver_env(), capture_output=True, text=True, timeout=timeout_s)
        out, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = "timeout"
    log.write_text(" ".join(cmd) + "\n" + out)
    wall = round(time.perf_counter() - t0, 1)
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX):])
            record["wall_s"] = wall
            record["log"] = str(log)
            return record
    tail = [l for l in out.strip().splitlines() if "Error" in l or "error" in l][-3:] or out.strip().splitlines()[-3:]
    return {"impl": impl, "stage": stage, "offload": offload, "dtype": args.dtype, "tag": tag, "wall_s": wall,
            "log": str(log), "status": f"failed (exit {rc}): " + " | ".join(tail)[-1500:]}


IMPORT_SNIPPETS = {
    "torch": "import torch",
    "zerospeed": "import zerospeed",
    "zerospeed+initialize": "import zerospeed; zerospeed.initialize",
    "deepspeed": "import deepspeed",
}


def measure_import_times(names: list[str], repeats: int) -> dict[str, dict]:
    """Median seconds to import each module in a fresh interpreter (timed inside it, start-up excluded).

    The repeats go round-robin over the names, so a burst of load from other processes hits
    every name alike instead of one.
    """
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for _ in range(repeats):
        for name in names:
            if name in errors:
                continue
            code = ("import time; t0 = time.perf_counter()\n" + IMPORT_SNIPPETS[name].replace("; ", "\n")
                    + "\nprint(time.perf_counter() - t0)")
            res = subprocess.run([sys.executable, "-c", code], env=driver_env(), capture_output=True, text=True)
            if res.returncode != 0:
                errors[name] = (res.stderr.strip().splitlines() or ["?"])[-1]
            else:
                samples[name].append(float(res.stdout.strip().splitlines()[-1]))
    return {name: ({"error": errors[name]} if name in errors else
                   {"median_s": round(statistics.median(samples[name]), 3),
                    "samples_s": [round(s, 3) for s in samples[name]]})
            for name in names}


def add_driver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--impls", default="ddp,deepspeed,zerospeed", help="comma list of ddp,deepspeed,zerospeed")
    p.add_argument("--repeats", type=int, default=1, help="runs of each row (interleaved); medians reported")
    p.add_argument("--import-repeats", type=int, default=5, help="fresh interpreters per import-time figure (0: skip)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--timeout", type=int, default=900, help="seconds per torchrun before it is killed")
    p.add_argument("--out", default=None, help="append every JSON line to this file")
    p.add_argument("--log-dir", default=None, help="per-run logs (default: a new temp dir)")


def parse_impls(text: str) -> list[str]:
    impls = [i.strip() for i in text.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"--impls: unknown {bad}; allowed: {','.join(IMPLS)}")
    return impls


def emit(record: dict, out: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def _median_record(records: list[dict]) -> dict:
    """Merge repeats: median tokens/s and step time, max peak RSS per rank; the rest from the first ok run."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return records[0]
    merged = dict(ok[0])
    merged["repeats"] = len(ok)
    merged["tokens_per_s"] = round(statistics.median(r["tokens_per_s"] for r in ok), 2)
    merged["step_time_s"] = round(statistics.median(r["step_time_s"] for r in ok), 4)
    merged["initialize_s"] = round(statistics.median(r["initialize_s"] for r in ok), 3)
    merged["tokens_per_s_runs"] = [r["tokens_per_s"] for r in ok]
    merged["peak_rss_mb_per_rank"] = [max(col) for col in zip(*(r["peak_rss_mb_per_rank"] for r in ok))]
    return merged


def row_label(r: dict) -> str:
    if r["impl"] == "ddp":
        return "ddp"
    return f"{r['impl']} z{r['stage']}" + (" +offload" if r.get("offload") == "cpu" else "")


def run_rows(rows: list[tuple[str, int, str]], args: argparse.Namespace, title: str) -> list[dict]:
    """Run every (impl, stage, offload) row `repeats` times (interleaved), print JSON lines, ratios and a table."""
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="zerospeed-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    impls = {impl for impl, _, _ in rows}
    meta = {"kind": "meta", "benchmark": title, "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "log_dir": str(log_dir),
            "model": {k: getattr(args, k) for k in MODEL_FLAGS}}
    if "deepspeed" in impls:
        meta["deepspeed_prebuild"] = prebuild_deepspeed_ops(any(o == "cpu" for _, _, o in rows), log_dir)
        meta["deepspeed_optimizer"] = ("torch.optim.AdamW (torch_adam: true)" if args.ds_torch_adam
                                       else "DeepSpeed FusedAdam / DeepSpeedCPUAdam (JIT ops prebuilt outside timing)")
    emit(meta, args.out)
    import_times = {}
    if args.import_repeats > 0:
        names = ["torch"] + (["zerospeed", "zerospeed+initialize"] if "zerospeed" in impls else []) \
            + (["deepspeed"] if "deepspeed" in impls else [])
        import_times = measure_import_times(names, args.import_repeats)
        emit({"kind": "import_time", **import_times}, args.out)

    runs: dict[tuple, list[dict]] = {row: [] for row in rows}
    for rep in range(args.repeats):
        for impl, stage, offload in rows:
            tag = f"{impl}-z{stage}{'-offload' if offload == 'cpu' else ''}-r{rep}"
            print(f">>> {tag}", file=sys.stderr, flush=True)
            record = run_worker(impl, stage, offload, args, log_dir, tag, args.timeout)
            emit({"kind": "run", **record}, args.out)
            runs[(impl, stage, offload)].append(record)
    results = [_median_record(runs[row]) for row in rows]
    print_summary(results, args, title, import_times)
    return results


def _fmt(v, spec="{:.0f}") -> str:
    return "n/a" if v is None else spec.format(v)


def print_summary(results: list[dict], args: argparse.Namespace, title: str, import_times: dict) -> None:
    by_key = {(r["impl"], r["stage"], r.get("offload", "none")): r for r in results}
    ddp = by_key.get(("ddp", 0, "none"))
    ratio_lines = []
    for r in results:
        if r["impl"] != "zerospeed" or r.get("status") != "ok":
            continue
        ds = by_key.get(("deepspeed", r["stage"], r.get("offload", "none")))
        ratios = {"kind": "ratio", "row": row_label(r)}
        for name, peer in (("ddp", ddp), ("deepspeed", ds)):
            if peer and peer.get("status") == "ok":
                ratios[f"tokens_per_s_vs_{name}"] = round(r["tokens_per_s"] / peer["tokens_per_s"], 3)
                ratios[f"peak_rss_vs_{name}"] = round(max(r["peak_rss_mb_per_rank"]) / max(peer["peak_rss_mb_per_rank"]), 3)
                ratios[f"initialize_s_vs_{name}"] = round(r["initialize_s"] / max(peer["initialize_s"], 1e-9), 3)
        emit(ratios, args.out)
        ratio_lines.append(ratios)

    ok = next((r for r in results if r.get("params")), None)
    shape = (f"layers={args.layers} dim={args.dim} heads={args.heads} vocab={args.vocab} seq={args.seq} "
             f"micro_batch={args.micro_batch} grad_accum={args.grad_accum} dtype={args.dtype} world={args.nproc} "
             f"steps={args.steps} (warmup {args.warmup_steps})" + (f" params={ok['params'] / 1e6:.1f}M" if ok else ""))
    print(f"\n### {title}: {shape}\n")
    print("| run | tokens/s | vs ddp | step s | initialize s | peak RSS MB/rank | model states MB/rank (measured) "
          "| theory MB/rank (B/param) | final loss | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        okr = r.get("status") == "ok"
        vs = (f"{r['tokens_per_s'] / ddp['tokens_per_s']:.2f}x" if okr and ddp and ddp.get("status") == "ok" else "")
        measured = r.get("model_state_mb_per_rank")
        measured_s = "n/a" if not measured else "/".join(f"{m:.0f}" for m in measured)
        theory = (f"{r['theory_model_state_mb_per_rank']:.0f} ({r['theory_model_state_bytes_per_param']:g})"
                  if okr else "")
        print(f"| {row_label(r)} | {_fmt(r.get('tokens_per_s'))} | {vs} | {_fmt(r.get('step_time_s'), '{:.2f}')} "
              f"| {_fmt(r.get('initialize_s'), '{:.2f}')} "
              f"| {'/'.join(f'{m:.0f}' for m in r['peak_rss_mb_per_rank']) if okr else ''} | {measured_s} "
              f"| {theory} | {_fmt(r.get('final_loss'), '{:.6f}')} | {r.get('status', '')[:80]} |")
    for line in ratio_lines:
        parts = [f"{k} {v}" for k, v in line.items() if k not in ("kind", "row")]
        print(f"\n{line['row']}: " + ", ".join(parts))
    if import_times:
        print(f"\nimport time, median of {args.import_repeats} fresh interpreters (interpreter start-up excluded):\n")
        print("| import | seconds |\n|---|---:|")
        for name, t in import_times.items():
            print(f"| `{IMPORT_SNIPPETS[name]}` | {t.get('median_s', t.get('error'))} |")


if __name__ == "__main__":
    sys.exit(worker_main())
