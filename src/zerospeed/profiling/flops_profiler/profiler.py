"""FlopsProfiler and get_model_profile: DeepSpeed's flops profiler API over torch's op counting.

While profiling, every module carries DeepSpeed's attributes: `__flops__` and `__macs__`
(ops run by the module itself, not its children), `__params__` (parameters of the module
and its children), `__duration__` (forward seconds). `get_module_flops(m)` sums the
subtree, so a module's figure is always its own plus its children's and the root's is the
total. Counting runs as a torch dispatch mode entered when the outermost profiled module
starts its forward and left when it ends, so ops outside a forward are not counted.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from zerospeed.profiling.flops_profiler.counting import FunctionCounter, OpCounter
from zerospeed.profiling.flops_profiler.report import (
    duration_to_string,
    flops_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
    render_profile,
)

__all__ = [
    "FlopsProfiler", "get_model_profile", "get_module_flops", "get_module_macs", "get_module_duration",
    "number_to_string", "macs_to_string", "flops_to_string", "params_to_string", "duration_to_string",
]

_ATTRS = ("__flops__", "__macs__", "__params__", "__duration__", "__start_time__")


def get_module_flops(module: torch.nn.Module) -> int:
    return sum(getattr(m, "__flops__", 0) for m in module.modules())


def get_module_macs(module: torch.nn.Module) -> int:
    return sum(getattr(m, "__macs__", 0) for m in module.modules())


def get_module_duration(module: torch.nn.Module) -> float:
    duration = getattr(module, "__duration__", 0.0)
    if duration == 0:  # never called itself (a ModuleList): its children's time
        duration = sum(get_module_duration(child) for child in module.children())
    return duration


def _param_count(module: torch.nn.Module) -> int:
    # a ZeRO-3 parameter is empty outside a gather; ds_numel is its real size
    return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())


class FlopsProfiler:
    """Measures FLOPs, MACs, parameters and forward latency of each module of `model`.

    Usage as in DeepSpeed: `start_profile()`, run forwards, read `get_total_flops()` etc.
    or `print_model_profile()`, then `end_profile()`.
    """

    def __init__(self, model: torch.nn.Module, ds_engine: Any = None, recompute_fwd_factor: float = 0.0) -> None:
        self.model = model
        self.ds_engine = ds_engine
        self.recompute_fwd_factor = recompute_fwd_factor
        self.started = False
        self.forwards = 0  # outermost forwards profiled since start
        self._handles: list = []
        self._stack: list[torch.nn.Module] = []
        self._modes: tuple | None = None
        self._synchronize = _synchronizer()

    # -- lifecycle ------------------------------------------------------------------------
    def start_profile(self, ignore_list: list[type] | None = None) -> None:
        """Reset the counts and hook every module (except types in `ignore_list`)."""
        self.reset_profile()
        self._remove_hooks()
        _warm_up_dispatch()
        ignored = tuple(ignore_list or ())
        for module in self.model.modules():
            if ignored and isinstance(module, ignored):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook, always_call=True))
        self.started = True

    def stop_profile(self) -> None:
        """Stop counting (remove the hooks); the figures stay readable until end_profile()."""
        self._remove_hooks()
        self._leave_modes()
        self._stack.clear()

    def reset_profile(self) -> None:
        self.forwards = 0
        for module in self.model.modules():
            module.__flops__ = 0
            module.__macs__ = 0
            module.__params__ = _param_count(module)
            module.__duration__ = 0.0
            module.__start_time__ = 0.0

    def end_profile(self) -> None:
        """Stop and remove every profiling attribute from the modules."""
        if not self.started:
            return
        self.stop_profile()
        for module in self.model.modules():
            for attr in _ATTRS:
                module.__dict__.pop(attr, None)
        self.started = False

    # -- hooks ----------------------------------------------------------------------------
    def _pre_hook(self, module: torch.nn.Module, inputs) -> None:
        if not self._stack:
            self._enter_modes()
        self._stack.append(module)
        self._synchronize()
        module.__start_time__ = time.perf_counter()

    def _post_hook(self, module: torch.nn.Module, inputs, output) -> None:
        if not self._stack or self._stack[-1] is not module:
            return
        self._synchronize()
        module.__duration__ += time.perf_counter() - module.__start_time__
        self._stack.pop()
        if not self._stack:
            self._leave_modes()
            self.forwards += 1
            self.on_outermost_forward_done()

    def on_outermost_forward_done(self) -> None:
        """Called after each outermost forward; the engine's profiler stops here."""

    def _count(self, flops: int, macs: int) -> None:
        module = self._stack[-1] if self._stack else self.model
        module.__flops__ += flops
        module.__macs__ += macs

    def _enter_modes(self) -> None:
        self._modes = (OpCounter(self._count), FunctionCounter(self._count))
        for mode in self._modes:
            mode.__enter__()

    def _leave_modes(self) -> None:
        if self._modes is not None:
            for mode in reversed(self._modes):
                mode.__exit__(None, None, None)
            self._modes = None

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- totals ---------------------------------------------------------------------------
    def get_total_flops(self, as_string: bool = False):
        total = get_module_flops(self.model)
        return number_to_string(total) if as_string else total

    def get_total_macs(self, as_string: bool = False):
        total = get_module_macs(self.model)
        return macs_to_string(total) if as_string else total

    def get_total_duration(self, as_string: bool = False):
        total = get_module_duration(self.model)
        return duration_to_string(total) if as_string else total

    def get_total_params(self, as_string: bool = False):
        total = getattr(self.model, "__params__", None)
        total = _param_count(self.model) if total is None else total
        return params_to_string(total) if as_string else total

    # -- reports --------------------------------------------------------------------------
    def print_model_profile(self, profile_step: int = 1, module_depth: int = -1, top_modules: int = 1,
                            detailed: bool = True, output_file: str | None = None, extra_lines=None) -> str | None:
        """Print (or write to `output_file`) the summary, the aggregated and the detailed profile."""
        if not self.started:
            return None
        self.flops, self.macs, self.params = self.get_total_flops(), self.get_total_macs(), self.get_total_params()
        text = render_profile(self.model, profile_step=profile_step, module_depth=module_depth,
                              top_modules=top_modules, detailed=detailed, summary_lines=extra_lines or [])
        if output_file:
            import os

            os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
            with open(output_file, "w") as handle:
                handle.write(text)
        else:
            print(text, flush=True)
        return text

    def print_model_aggregated_profile(self, module_depth: int = -1, top_modules: int = 1) -> None:
        from zerospeed.profiling.flops_profiler.report import aggregated_profile

        if not hasattr(self.model, "__flops__"):
            print("no __flops__ attribute in the model, call this function after start_profile and before end_profile")
            return
        print("\n".join(aggregated_profile(self.model, module_depth, top_modules)))


def _warm_up_dispatch(_done: list = []) -> None:  # noqa: B006 - the list remembers
    """Enter the counting modes once on a tiny op: the first entry imports torch._dynamo (seconds),
    which must not land inside a timed forward."""
    if not _done:
        with OpCounter(lambda flops, macs: None), FunctionCounter(lambda flops, macs: None):
            torch.ones(1) + 1
        _done.append(True)


def _synchronizer():
    try:
        from zerospeed.accelerator import get_accelerator

        return get_accelerator().synchronize
    except Exception:  # noqa: BLE001 - standalone use without a configured accelerator
        return lambda: None


def get_model_profile(model: torch.nn.Module, input_shape: tuple | None = None, args: list = [],  # noqa: B006
                      kwargs: dict = {}, print_profile: bool = True, detailed: bool = True,  # noqa: B006
                      module_depth: int = -1, top_modules: int = 1, warm_up: int = 1, as_string: bool = True,
                      output_file: str | None = None, ignore_modules: list[type] | None = None,
                      mode: str = "forward"):
    """FLOPs, MACs and parameters of one forward (or `generate`) of `model`, as DeepSpeed's function.

    With `input_shape`, the model gets one uninitialised tensor of that shape and of the
    model's dtype and device. Returns strings (`as_string=True`, the default) or numbers.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"get_model_profile(model=...) needs a torch.nn.Module, got {type(model).__name__}")
    if mode not in ("forward", "generate"):
        raise ValueError(f"get_model_profile(mode={mode!r}): allowed 'forward', 'generate'")
    if input_shape is not None:
        if not isinstance(input_shape, tuple) or not input_shape:
            raise ValueError(f"get_model_profile(input_shape={input_shape!r}) needs a non-empty tuple")
        first = next(model.parameters(), None)
        dtype = first.dtype if first is not None else torch.get_default_dtype()
        device = first.device if first is not None else None
        args = [torch.empty(input_shape, dtype=dtype, device=device)]
    if not args and not kwargs:
        raise ValueError("get_model_profile needs input_shape, args or kwargs")
    model.eval()
    run = model.generate if mode == "generate" else model
    for _ in range(warm_up):
        run(*args, **kwargs)
    profiler = FlopsProfiler(model)
    profiler.start_profile(ignore_list=ignore_modules)
    run(*args, **kwargs)
    flops, macs, params = profiler.get_total_flops(), profiler.get_total_macs(), profiler.get_total_params()
    if print_profile:
        profiler.print_model_profile(profile_step=warm_up, module_depth=module_depth, top_modules=top_modules,
                                     detailed=detailed, output_file=output_file)
    profiler.end_profile()
    if as_string:
        return number_to_string(flops), macs_to_string(macs), params_to_string(params)
    return flops, macs, params
