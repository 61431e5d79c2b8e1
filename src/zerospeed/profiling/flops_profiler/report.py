"""Text of a flops profile: DeepSpeed's number formats, summary, aggregated and per-module tree."""

from __future__ import annotations

import torch

DEFAULT_PRECISION = 2
_UNITS = {"T": 1e12, "G": 1e9, "M": 1e6, "K": 1e3, "": 1, "m": 1e-3, "u": 1e-6}


def number_to_string(num: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    if units is None:
        for units, magnitude in _UNITS.items():
            if num >= magnitude or (units == "" and num == 0):
                break
        else:
            units = "u"
    return f"{round(num / _UNITS[units], precision):g} {units}"


def macs_to_string(macs: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    return f"{number_to_string(macs, units, precision)}MACs"


def flops_to_string(flops: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    return f"{number_to_string(flops, units, precision)}FLOPS"


def params_to_string(params: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    units = units.replace("B", "G") if units else units
    return number_to_string(params, units, precision).replace("G", "B").strip()


def duration_to_string(duration: float, units: str | None = None, precision: int = DEFAULT_PRECISION) -> str:
    return f"{number_to_string(duration, units, precision)}s"


def _pct(part: float, whole: float) -> str:
    return f"{round(100 * part / whole, DEFAULT_PRECISION) if whole else 0:g}%"


def module_line(module: torch.nn.Module, totals: tuple[int, int, int, float]) -> str:
    """params, MACs, FLOPs and latency of `module` (subtree) with their shares of the totals, and FLOP/s."""
    from zerospeed.profiling.flops_profiler.profiler import get_module_duration, get_module_flops, get_module_macs

    params, macs, flops, duration = (module.__params__, get_module_macs(module), get_module_flops(module),
                                     get_module_duration(module))
    total_params, total_macs, total_flops, total_duration = totals
    return ", ".join([
        f"{params_to_string(params)} = {_pct(params, total_params)} Params",
        f"{macs_to_string(macs)} = {_pct(macs, total_macs)} MACs",
        f"{number_to_string(flops)}FLOPs = {_pct(flops, total_flops)} FLOPs",
        f"{duration_to_string(duration)} = {_pct(duration, total_duration)} latency",
        flops_to_string(flops / duration if duration else 0),
    ])


def detailed_tree(model: torch.nn.Module, module_depth: int = -1) -> list[str]:
    """The module tree (down to `module_depth`, -1 for all) with each module's profile line."""
    from zerospeed.profiling.flops_profiler.profiler import get_module_duration, get_module_flops, get_module_macs

    totals = (model.__params__, get_module_macs(model), get_module_flops(model), get_module_duration(model))
    lines: list[str] = []

    def walk(module: torch.nn.Module, name: str, depth: int) -> None:
        indent = "  " * depth
        prefix = f"{indent}({name}): " if name else indent
        extra = module.extra_repr()
        body = module_line(module, totals) + (f", {extra}" if extra else "")
        children = list(module.named_children())
        if not children or (module_depth >= 0 and depth >= module_depth):
            lines.append(f"{prefix}{type(module).__name__}({body})")
            return
        lines.append(f"{prefix}{type(module).__name__}(")
        lines.append(f"{indent}  {body}")
        for child_name, child in children:
            walk(child, child_name, depth + 1)
        lines.append(f"{indent})")

    walk(model, "", 0)
    return lines


def aggregated_profile(model: torch.nn.Module, module_depth: int = -1, top_modules: int = 1) -> list[str]:
    """Per depth, the top module classes by params, MACs and forward latency (summed per class)."""
    from zerospeed.profiling.flops_profiler.profiler import get_module_duration, get_module_macs

    info: dict[int, dict[str, list[float]]] = {}

    def walk(module: torch.nn.Module, depth: int) -> None:
        row = info.setdefault(depth, {}).setdefault(type(module).__name__, [0, 0, 0.0])
        row[0] += get_module_macs(module)
        row[1] += module.__params__
        row[2] += get_module_duration(module)
        for child in module.children():
            walk(child, depth + 1)

    walk(model, 0)
    depth = len(info) - 1 if module_depth == -1 else min(module_depth, len(info) - 1)
    lines = [f"Top {top_modules} modules in terms of params, MACs or fwd latency at different model depths:"]
    for d in range(depth + 1):
        def top(index: int, fmt):
            ranked = sorted(info[d].items(), key=lambda item: item[1][index], reverse=True)[:top_modules]
            return {name: fmt(values[index]) for name, values in ranked}

        lines += [f"depth {d}:", f"    params      - {top(1, params_to_string)}",
                  f"    MACs        - {top(0, macs_to_string)}", f"    fwd latency - {top(2, duration_to_string)}"]
    return lines


def render_profile(model: torch.nn.Module, *, profile_step: int, module_depth: int, top_modules: int,
                   detailed: bool, summary_lines: list[tuple[str, object]]) -> str:
    """The whole report: DeepSpeed's section headers, its summary fields, then the trees."""
    from zerospeed.profiling.flops_profiler.profiler import get_module_duration, get_module_flops, get_module_macs

    flops, macs, duration = get_module_flops(model), get_module_macs(model), get_module_duration(model)
    row = "{:<70}  {:<8}".format
    lines = ["", "-------------------------- DeepSpeed Flops Profiler --------------------------",
             f"Profile Summary at step {profile_step}:",
             "Notations:",
             "number of parameters (params), number of multiply-accumulate operations (MACs),",
             "number of floating-point operations (flops), floating-point operations per second (FLOPS),",
             "fwd latency (forward propagation latency), bwd latency (backward propagation latency),",
             "step (weights update latency), iter latency (sum of fwd, bwd and step latency)", ""]
    lines += [row(label, str(value)) for label, value in summary_lines if label.startswith(("world", "data", "batch"))]
    lines += [
        row("params per rank: ", params_to_string(model.__params__)),
        row("fwd MACs per rank: ", macs_to_string(macs)),
        row("fwd flops per rank: ", number_to_string(flops)),
        row("fwd latency: ", duration_to_string(duration)),
        row("fwd FLOPS per rank = fwd flops per rank / fwd latency: ", flops_to_string(flops / duration if duration else 0)),
    ]
    lines += [row(label, str(value)) for label, value in summary_lines if not label.startswith(("world", "data", "batch"))]
    lines += ["", "----------------------------- Aggregated Profile per rank -----------------------------"]
    lines += aggregated_profile(model, module_depth, top_modules)
    if detailed:
        lines += ["", "------------------------------ Detailed Profile per rank ------------------------------",
                  "Each module profile is listed after its name in the following order:",
                  "params, percentage of total params, MACs, percentage of total MACs, FLOPs, percentage of total "
                  "FLOPs, fwd latency, percentage of total fwd latency, fwd FLOPS",
                  "",
                  "Note: a module's figures include its submodules'; ops a module runs itself (functionals such as a "
                  "loss or a tied-embedding matmul) make up the difference between a parent and the sum of its "
                  "children. The fwd latency includes the profiler's own per-op bookkeeping.",
                  ""]
        lines += detailed_tree(model, module_depth)
    lines.append("------------------------------------------------------------------------------")
    return "\n".join(lines)
