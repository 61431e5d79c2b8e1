"""`zerospeed report`: what this environment offers zerospeed, as a table or one JSON object.

The counterpart of DeepSpeed's `ds_report`: Python, torch build (CUDA and NCCL versions),
accelerator (and why it was chosen), comm backends, precisions, CPU and RAM, /dev/shm,
async-I/O capability (O_DIRECT on the working directory's filesystem, io_uring), optional
packages. There are no ops to compile, so no op table of build states: the report says so.
The exit status is 1 when the set-up cannot train (no torch.distributed, no gloo, an
invalid accelerator setting); `problems` lists why.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import mmap
import os
import platform
import sys
import tempfile
from importlib import metadata
from typing import Any

HELP = "print the environment report (torch build, accelerator, comm backends, optional packages)"

OPTIONAL_PACKAGES = ("pydantic", "hjson", "psutil", "tqdm", "safetensors", "numpy", "tensorboard", "wandb", "deepspeed")
OPS_NOTE = "no build step needed (every op is torch or pure Python; nothing is compiled at first use)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    report = collect_report()
    print(json.dumps(report, indent=2, sort_keys=False) if args.json else format_report(report))
    return 1 if report["problems"] else 0


def collect_report() -> dict[str, Any]:
    """Every fact the report shows, as plain JSON-able data."""
    import torch

    import zerospeed

    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": _torch_info(torch),
        "zerospeed": {"version": zerospeed.__version__, "path": os.path.dirname(os.path.abspath(zerospeed.__file__))},
        "accelerator": _accelerator_info(),
        "comm_backends": _comm_backends(),
        "cpu": _cpu_info(),
        "shm": shm_info(),
        "async_io": {**o_direct_probe(os.getcwd()), **io_uring_probe()},
        "optional_packages": {name: _package_version(name) for name in OPTIONAL_PACKAGES},
        "ops": OPS_NOTE,
    }
    report["problems"] = find_problems(report)
    return report


def find_problems(report: dict[str, Any]) -> list[str]:
    """Why this set-up cannot train, one sentence each (empty when it can)."""
    problems = []
    backends = report["comm_backends"]
    if not backends["available"]:
        problems.append("torch.distributed is not available in this torch build; zerospeed needs it even on one process")
    elif not backends["gloo"]:
        problems.append("the gloo backend is missing from torch.distributed; zerospeed needs it for CPU collectives")
    if report["accelerator"]["name"] is None:
        problems.append(f"accelerator setting is invalid: {report['accelerator']['reason']}")
    return problems


def shm_info(path: str = "/dev/shm") -> dict[str, Any]:
    """Size of the shared-memory filesystem (DataLoader workers and NCCL use it; Docker's default is 64 MiB)."""
    try:
        stats = os.statvfs(path)
    except OSError as error:
        return {"path": path, "total_bytes": None, "free_bytes": None, "note": f"not available: {error.strerror}"}
    total, free = stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize
    note = "small: DataLoader workers and NCCL may fail; raise it (docker --shm-size)" if total < 1 << 30 else "ok"
    return {"path": path, "total_bytes": total, "free_bytes": free, "note": note}


def o_direct_probe(directory: str) -> dict[str, Any]:
    """Whether an O_DIRECT write of one aligned 4 KiB block works on a temp file in `directory`."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return {"o_direct": False, "o_direct_reason": "this platform has no O_DIRECT"}
    path = None
    try:
        handle, path = tempfile.mkstemp(prefix=".zerospeed_odirect_", dir=directory)
        os.close(handle)
        fd = os.open(path, os.O_WRONLY | flag)
        try:
            block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT requires
            os.write(fd, block)
        finally:
            os.close(fd)
        return {"o_direct": True, "o_direct_reason": f"an aligned O_DIRECT write to {directory} worked"}
    except OSError as error:
        return {"o_direct": False, "o_direct_reason": f"O_DIRECT on {directory} failed: {error.strerror} "
                                                      "(tmpfs and some network filesystems refuse it)"}
    finally:
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass


_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425, "arm64": 425, "ppc64le": 425, "s390x": 425}
_IO_URING_SYSCTL = {"0": "allowed", "1": "restricted to the io_uring_group sysctl's group", "2": "disabled"}


def io_uring_probe() -> dict[str, Any]:
    """io_uring: the `kernel.io_uring_disabled` sysctl, then an `io_uring_setup` syscall (it can be seccomp-blocked)."""
    sysctl = None
    try:
        with open("/proc/sys/kernel/io_uring_disabled", encoding="ascii") as handle:
            sysctl = handle.read().strip()
    except OSError:
        pass
    number = _IO_URING_SETUP.get(platform.machine())
    if sys.platform != "linux" or number is None:
        return {"io_uring": False, "io_uring_reason": f"no io_uring probe for {sys.platform}/{platform.machine()}"}
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(number, 1, params)
    if fd >= 0:
        os.close(fd)
        return {"io_uring": True, "io_uring_reason": f"io_uring_setup works (sysctl io_uring_disabled={sysctl})"}
    code = ctypes.get_errno()
    why = {errno.ENOSYS: "the kernel has no io_uring", errno.EPERM: "not permitted (sysctl or seccomp)"}.get(code, os.strerror(code))
    if sysctl in _IO_URING_SYSCTL and sysctl != "0":
        why += f"; kernel.io_uring_disabled={sysctl}: {_IO_URING_SYSCTL[sysctl]}"
    return {"io_uring": False, "io_uring_reason": f"io_uring_setup failed: {why} (the thread-pool I/O path is used)"}


def _torch_info(torch: Any) -> dict[str, Any]:
    if getattr(torch.version, "hip", None):
        build = "rocm"
    elif torch.version.cuda:
        build = "cuda"
    else:
        build = "cpu"
    nccl = None
    if build == "cuda":
        try:
            version = torch.cuda.nccl.version()
            nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception:  # noqa: BLE001 - a build without NCCL, or no driver
            nccl = None
    return {
        "version": torch.__version__,
        "build": build,
        "cuda_version": torch.version.cuda,
        "nccl_version": nccl,
        "path": os.path.dirname(os.path.abspath(torch.__file__)),
    }


def _accelerator_info() -> dict[str, Any]:
    from zerospeed.accelerator import accelerator_choice, get_accelerator
    from zerospeed.errors import ConfigError

    try:
        name, reason = accelerator_choice()
        accelerator = get_accelerator()
    except ConfigError as error:
        return {"name": None, "reason": str(error), "device_count": 0, "bf16": False, "fp16": False}
    return {
        "name": name,
        "reason": reason,
        "device_count": accelerator.device_count(),
        "comm_backend": accelerator.communication_backend_name(),
        "bf16": bool(accelerator.is_bf16_supported()),
        "fp16": bool(accelerator.is_fp16_supported()),
    }


def _comm_backends() -> dict[str, bool]:
    import torch.distributed as dist

    available = dist.is_available()
    return {
        "available": available,
        "gloo": available and dist.is_gloo_available(),
        "nccl": available and dist.is_nccl_available(),
        "mpi": available and dist.is_mpi_available(),
    }


def _cpu_info() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import psutil

        physical, ram = psutil.cpu_count(logical=False), psutil.virtual_memory().total
    except ImportError:
        physical, ram = None, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"logical_cores": os.cpu_count(), "physical_cores": physical, "usable_cores": usable, "ram_bytes": ram}


def _package_version(name: str) -> str | None:
    """Installed version from package metadata, without importing the package."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _rows(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    torch_info, accel, cpu = report["torch"], report["accelerator"], report["cpu"]
    accel_name = accel["name"] or "none (invalid setting)"
    return [
        ("environment", [
            ("python", f"{report['python']['version']} ({report['python']['executable']})"),
            ("platform", report["platform"]),
            ("torch", f"{torch_info['version']} ({torch_info['build']} build"
                      + (f", CUDA {torch_info['cuda_version']}" if torch_info["cuda_version"] else "")
                      + (f", NCCL {torch_info['nccl_version']}" if torch_info.get("nccl_version") else "") + ")"),
            ("torch install path", torch_info["path"]),
            ("zerospeed", report["zerospeed"]["version"]),
            ("zerospeed install path", report["zerospeed"]["path"]),
        ]),
        ("device", [
            ("accelerator", accel_name),
            ("chosen because", accel["reason"]),
            ("device count", str(accel["device_count"])),
            ("bf16 supported", _yes_no(accel["bf16"])),
            ("fp16 supported", _yes_no(accel["fp16"])),
            *[(f"comm backend {name}", "available" if ok else "not available")
              for name, ok in report["comm_backends"].items() if name != "available"],
            ("CPU cores", f"{cpu['logical_cores']} logical, {cpu['physical_cores']} physical, "
                          f"{cpu['usable_cores']} usable by this process"),
            ("RAM", f"{cpu['ram_bytes'] / 2**30:.1f} GiB"),
            ("/dev/shm", _shm_text(report["shm"])),
        ]),
        ("async I/O", [
            ("O_DIRECT", f"{_yes_no(report['async_io']['o_direct'])} ({report['async_io']['o_direct_reason']})"),
            ("io_uring", f"{_yes_no(report['async_io']['io_uring'])} ({report['async_io']['io_uring_reason']})"),
        ]),
        ("optional packages", [
            (name, version or "not installed") for name, version in report["optional_packages"].items()
        ]),
        ("ops", [("ops", report["ops"])]),
        ("verdict", [("problems", "; ".join(report["problems"]) or "none: this set-up can train")]),
    ]


def _shm_text(shm: dict[str, Any]) -> str:
    if shm["total_bytes"] is None:
        return shm["note"]
    return f"{shm['total_bytes'] / 2**30:.1f} GiB, {shm['free_bytes'] / 2**30:.1f} GiB free ({shm['note']})"


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned `label  value` rows under section titles."""
    sections = _rows(report)
    width = max(len(label) for _, rows in sections for label, _ in rows)
    lines = ["zerospeed environment report"]
    for title, rows in sections:
        lines += ["", title, "-" * len(title)]
        lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)
