"""`zerospeed report`: what this environment offers zerospeed, as a table or one JSON object.

The counterpart of DeepSpeed's `ds_report`: Python, torch build, accelerator (and why it
was chosen), comm backends, precisions, CPU and RAM, optional packages. There are no ops
to compile, so no op table of build states: the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
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
    return 0


def collect_report() -> dict[str, Any]:
    """Every fact the report shows, as plain JSON-able data."""
    import torch

    import zerospeed

    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": _torch_info(torch),
        "zerospeed": {"version": zerospeed.__version__, "path": os.path.dirname(os.path.abspath(zerospeed.__file__))},
        "accelerator": _accelerator_info(),
        "comm_backends": _comm_backends(),
        "cpu": _cpu_info(),
        "optional_packages": {name: _package_version(name) for name in OPTIONAL_PACKAGES},
        "ops": OPS_NOTE,
    }


def _torch_info(torch: Any) -> dict[str, Any]:
    if getattr(torch.version, "hip", None):
        build = "rocm"
    elif torch.version.cuda:
        build = "cuda"
    else:
        build = "cpu"
    return {
        "version": torch.__version__,
        "build": build,
        "cuda_version": torch.version.cuda,
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
                      + (f", CUDA {torch_info['cuda_version']}" if torch_info["cuda_version"] else "") + ")"),
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
              for name, ok in report["comm_backends"].items()],
            ("CPU cores", f"{cpu['logical_cores']} logical, {cpu['physical_cores']} physical, "
                          f"{cpu['usable_cores']} usable by this process"),
            ("RAM", f"{cpu['ram_bytes'] / 2**30:.1f} GiB"),
        ]),
        ("optional packages", [
            (name, version or "not installed") for name, version in report["optional_packages"].items()
        ]),
        ("ops", [("ops", report["ops"])]),
    ]


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned `label  value` rows under section titles."""
    sections = _rows(report)
    width = max(len(label) for _, rows in sections for label, _ in rows)
    lines = ["zerospeed environment report"]
    for title, rows in sections:
        lines += ["", title, "-" * len(title)]
        lines += [f"{label.ljust(width)}  {value}" for label, value in rows]
    return "\n".join(lines)
