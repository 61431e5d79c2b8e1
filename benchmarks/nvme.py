"""NVMe offload (ZeRO-Infinity) benchmark: a model whose fp32 Adam states exceed the memory it runs in.

    python benchmarks/nvme.py --path /var/tmp [--layers 32 --dim 2048 --steps 3]

A stack of `layers` bias-free Linear(dim, dim) layers (Ψ = layers * dim² parameters; fp32
Adam model states are 16Ψ bytes: params, grads, exp_avg, exp_avg_sq) trains `steps` steps,
each configuration in its own process (one rank, gloo):
- zerospeed stage 3, offload_param and offload_optimizer to NVMe (the subject);
- zerospeed stage 3 in memory (the reference for step time and memory);
- DeepSpeed 0.19.8 stage 3 with the same NVMe offload config, where it runs (its
  async_io op needs libaio and a C++ build; the error is reported when it does not).
Memory: a cgroup v2 limit is applied where /sys/fs/cgroup offers one; otherwise peak RSS
(VmHWM: whole process, and training steps alone after resetting it) is reported against
the 16Ψ bytes of model states. The zerospeed NVMe run reports bytes read/written per
step, the step time split into compute and exposed read/write waits, and the disk
bandwidth achieved while I/O was in flight as a fraction of what `zerospeed io-bench`
measures for the same aio settings on the same directory.
Prints a table and one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

AIO = {"block_size": 1048576, "queue_depth": 8, "intra_op_parallelism": 2, "single_submit": False,
       "overlap_events": True}


def _config(mode: str, path: str, dim: int) -> dict:
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0, "sub_group_size": dim * dim,
            "stage3_prefetch_bucket_size": 2 * dim * dim, "stage3_max_live_parameters": 4 * dim * dim}
    if mode in ("zerospeed-nvme", "deepspeed-nvme"):
        zero["offload_param"] = {"device": "nvme", "nvme_path": path, "buffer_count": 4, "buffer_size": dim * dim,
                                 "max_in_cpu": 0, "pin_memory": False}
        zero["offload_optimizer"] = {"device": "nvme", "nvme_path": path, "buffer_count": 3, "pipeline_read": True,
                                     "pipeline_write": True, "pin_memory": False}
    return {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "steps_per_print": 1000,
            "optimizer": {"type": "Adam", "params": {"lr": 1e-4}}, "zero_optimization": zero, "aio": AIO,
            "gradient_clipping": 1.0}


def _model(layers: int, dim: int):
    import torch

    blocks = []
    for _ in range(layers):
        blocks += [torch.nn.Linear(dim, dim, bias=False), torch.nn.GELU()]
    return torch.nn.Sequential(*blocks)


def _peak_rss() -> int:
    """This process's resident high-water mark (VmHWM: per address space, so exec resets it,
    unlike ru_maxrss, which a child inherits from the process it was forked from)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> bool:
    """Restart the high-water mark (Linux >= 4.0), so the training peak is measured on its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _io_totals(engine) -> dict:
    """Bytes and waits of zerospeed's NVMe tiers so far (zeros for other engines)."""
    optimizer = engine.optimizer
    tiers = [getattr(optimizer, "tier", None), getattr(optimizer, "param_tier", None)]
    totals = {"bytes_read": 0, "bytes_written": 0, "read_wait": 0.0, "write_wait": 0.0, "read_busy": 0.0,
              "write_busy": 0.0}
    for tier in tiers:
        io = getattr(tier, "io", None)
        if io is None:
            continue
        stats = io.stats.snapshot()
        totals["bytes_read"] += stats["bytes_read"]
        totals["bytes_written"] += stats["bytes_written"]
        totals["read_busy"] += stats["read_seconds"]
        totals["write_busy"] += stats["write_seconds"]
        totals["read_wait"] += tier.read_wait_seconds
        totals["write_wait"] += tier.write_wait_seconds
    return totals


def child(args) -> dict:
    swap = tempfile.mkdtemp(prefix="zs-bench-nvme-", dir=args.path)
    try:
        return _train(args, swap)
    finally:
        shutil.rmtree(swap, ignore_errors=True)


def _train(args, swap: str) -> dict:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(args.port))
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    limit = _apply_cgroup_limit(args.memory_limit) if args.memory_limit else None
    config = _config(args.mode, swap, args.dim)
    began = time.perf_counter()
    if args.mode.startswith("deepspeed"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed as ds

        ds.init_distributed(dist_backend="gloo")
    else:
        import zerospeed as ds

        ds.init_distributed(dist_backend="gloo")
    with ds.zero.Init(config_dict_or_path=config):
        model = _model(args.layers, args.dim)
    engine, *_ = ds.initialize(model=model, model_parameters=model.parameters(), config=config)
    init_seconds = time.perf_counter() - began
    x = torch.randn(8, args.dim)
    times, per_step = [], []
    init_peak = _peak_rss()
    reset = _reset_peak_rss()
    for _ in range(args.steps):
        before = _io_totals(engine) if args.mode == "zerospeed-nvme" else None
        start = time.perf_counter()
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - start)
        if before is not None:
            after = _io_totals(engine)
            per_step.append({k: after[k] - before[k] for k in after})
    params = sum(int(getattr(p, "ds_numel", p.numel())) for p in model.parameters())
    result = {"mode": args.mode, "params": params, "states_bytes": 16 * params, "init_s": init_seconds,
              "step_s": times, "peak_rss_bytes": max(init_peak, _peak_rss()), "init_peak_rss_bytes": init_peak,
              "train_peak_rss_bytes": _peak_rss() if reset else None, "cgroup_limit_bytes": limit,
              "loss": float(loss)}
    if per_step:
        steady = per_step[1:] or per_step  # the first step also creates the optimizer states
        result["io"] = {k: sum(s[k] for s in steady) / len(steady) for k in steady[0]}
        result["io_first_step"] = per_step[0]
    return result


def _apply_cgroup_limit(limit: int) -> int | None:
    """Move this process into a cgroup v2 with memory.max = limit, where cgroup v2 offers memory."""
    root = "/sys/fs/cgroup"
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return None
    if "memory" not in open(os.path.join(root, "cgroup.controllers")).read().split():
        return None
    group = os.path.join(root, f"zerospeed-bench-{os.getpid()}")
    os.makedirs(group, exist_ok=True)
    with open(os.path.join(group, "memory.max"), "w") as f:
        f.write(str(limit))
    with open(os.path.join(group, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    return limit


def _io_bench_figure(path: str) -> dict:
    from zerospeed.launcher.io_bench import measure

    return measure(path, 256 << 20, AIO["block_size"], AIO["queue_depth"], AIO["intra_op_parallelism"], trials=2)


def _run_child(mode: str, args) -> dict:
    from zerospeed.comm.ports import free_port

    command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--path", args.path, "--layers",
               str(args.layers), "--dim", str(args.dim), "--steps", str(args.steps), "--port", str(free_port()),
               "--threads", str(args.threads)]
    if args.memory_limit and mode == "zerospeed-nvme":
        command += ["--memory-limit", str(args.memory_limit)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    for line in done.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"mode": mode, "error": f"exit {done.returncode}: {tail[:300]}"}


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f}"


def report(results: list[dict], bench: dict) -> None:
    print(f"\nio-bench on the same directory ({'O_DIRECT' if bench['direct'] else 'buffered'}, block "
          f"{AIO['block_size']}, queue depth {AIO['queue_depth']}, {AIO['intra_op_parallelism']} threads): "
          f"write {bench['write_gbps']:.2f} GB/s, read {bench['read_gbps']:.2f} GB/s")
    print(f"\n{'run':<16} {'params':>8} {'states GB':>9} {'peak RSS GB':>11} {'train RSS GB':>12} "
          f"{'RSS/states':>10} {'init s':>7} {'step s (mean of steady)':>24}")
    for r in results:
        if "error" in r:
            print(f"{r['mode']:<16} failed: {r['error']}")
            continue
        steady = r["step_s"][1:] or r["step_s"]
        print(f"{r['mode']:<16} {r['params'] / 1e6:>7.0f}M {_gb(r['states_bytes']):>9} {_gb(r['peak_rss_bytes']):>11} "
              f"{_gb(r['train_peak_rss_bytes'] or 0):>12} {r['peak_rss_bytes'] / r['states_bytes']:>10.2f} "
              f"{r['init_s']:>7.1f} {sum(steady) / len(steady):>24.2f}")
    for r in results:
        if "io" not in r:
            continue
        io, steady = r["io"], r["step_s"][1:] or r["step_s"]
        step = sum(steady) / len(steady)
        compute = step - io["read_wait"] - io["write_wait"]
        read_bw = io["bytes_read"] / io["read_busy"] if io["read_busy"] else 0.0
        write_bw = io["bytes_written"] / io["write_busy"] if io["write_busy"] else 0.0
        print(f"\n{r['mode']} per steady step: read {_gb(io['bytes_read'])} GB, written {_gb(io['bytes_written'])} GB; "
              f"step {step:.2f} s = compute (incl. overlapped I/O) {compute:.2f} s + read wait {io['read_wait']:.2f} s "
              f"+ write wait {io['write_wait']:.2f} s; I/O in flight: read {io['read_busy']:.2f} s, "
              f"write {io['write_busy']:.2f} s")
        print(f"disk bandwidth while in flight: read {read_bw / 1e9:.2f} GB/s "
              f"({read_bw / 1e9 / bench['read_gbps']:.0%} of io-bench), write {write_bw / 1e9:.2f} GB/s "
              f"({write_bw / 1e9 / bench['write_gbps']:.0%} of io-bench)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/var/tmp", help="directory for swap files (a real disk, not tmpfs)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--memory-limit", type=int, default=0, help="cgroup v2 memory.max for the NVMe run (bytes)")
    parser.add_argument("--modes", default="zerospeed-nvme,zerospeed-memory,deepspeed-nvme")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)), flush=True)
        return 0
    states = 16 * args.layers * args.dim * args.dim
    if not args.memory_limit and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        args.memory_limit = int(states / 1.5)
    bench = _io_bench_figure(args.path)
    results = [_run_child(mode, args) for mode in args.modes.split(",")]
    for result in results:
        print(json.dumps(result))
    report(results, bench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
