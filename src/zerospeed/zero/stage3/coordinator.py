"""When units are fetched and released: module hooks, external parameters, prefetch.

Rules, in order of the training step:
- forward: a module's pre-hook fetches the units of its direct parameters and of the
  parameters registered as external to it; its post-hook releases them (unless
  persistent, held by `GatheredParameters`, or requested again soon in the same phase)
  and, when autograd records, wraps its tensor outputs so that backward re-fetches
  them before the module's own backward runs.
- a parameter read through `module.weight` while it is released, inside some module's
  forward, is fetched on the spot and registered as external to the innermost running
  hooked module (DeepSpeed's rule), so the tied LM head `h @ embed.weight.t()` works.
- backward: units are released once all their gradients are in (the reducer says so).
  A unit no gradient releases (every member frozen or not optimized) is still re-fetched
  when autograd needs its weights (a frozen Linear's input gradient), and released as soon
  as its module's backward is done: the pre-hook routes the module's inputs through
  `_ReleaseAfterBackward`, whose backward runs once every input's gradient is computed
  (FSDP2's post-backward rule). Whatever is left is released when backward ends.
- prefetch: while this micro-step's requests follow the last one's, the next units are
  gathered ahead: at most `prefetch_numel` elements prefetched and not yet requested, and
  none that would take the gathered total past `max_live_numel` (which, as DeepSpeed's
  stage3_max_live_parameters, bounds prefetch and reuse, never a fetch a module needs now).

`FetchStats` keeps the books: elements gathered now and at most, elements prefetched and
not yet requested (bounded by `prefetch_numel`), all-gathers issued.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus, unit_of
from zerospeed.zero.stage3.schedule import BACKWARD, FORWARD, FetchSchedule

EXTERNAL_ATTR = "_zs_external_params"


@dataclass(frozen=True)
class FetchPolicy:
    """stage3_prefetch_bucket_size, stage3_max_live_parameters, stage3_max_reuse_distance (elements)."""

    prefetch_numel: int = 50_000_000
    max_live_numel: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000


@dataclass
class FetchStats:
    """Gathered elements of non-persistent units, now and at most since `reset_peaks()`."""

    live_numel: int = 0  # gathered or being gathered
    peak_live_numel: int = 0
    prefetched_numel: int = 0  # gathered ahead by prefetch, not requested yet
    peak_prefetched_numel: int = 0
    all_gathers: int = 0
    prefetches: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _RefetchForBackward(torch.autograd.Function):
    """Identity on a module output whose backward first re-gathers the module's units."""

    @staticmethod
    def forward(ctx, refetch, tensor):
        ctx.refetch = refetch
        return tensor.detach()

    @staticmethod
    def backward(ctx, grad):
        ctx.refetch()
        return None, grad


class _ReleaseAfterBackward(torch.autograd.Function):
    """Identity on a module's inputs whose backward (after all of the module's) releases its units."""

    @staticmethod
    def forward(ctx, release, *tensors):
        ctx.release = release
        return tuple(t.detach() for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.release()
        return (None, *grads)


def _wrap_inputs(args: tuple, release) -> tuple | None:
    """`args` with every floating tensor that requires grad routed through one `_ReleaseAfterBackward`."""
    positions = [i for i, a in enumerate(args)
                 if isinstance(a, torch.Tensor) and a.requires_grad and a.is_floating_point()]
    if not positions:
        return None
    wrapped = _ReleaseAfterBackward.apply(release, *(args[i] for i in positions))
    out = list(args)
    for i, tensor in zip(positions, wrapped):
        out[i] = tensor
    return tuple(out)


def _wrap_outputs(value, refetch):
    if isinstance(value, torch.Tensor):
        if value.requires_grad and value.is_floating_point():
            return _RefetchForBackward.apply(refetch, value)
        return value
    if isinstance(value, tuple):
        items = [_wrap_outputs(v, refetch) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_wrap_outputs(v, refetch) for v in value]
    if isinstance(value, dict):
        for key in list(value.keys()):
            value[key] = _wrap_outputs(value[key], refetch)
        return value
    return value


class _ZeroParameterDict(dict):
    """A module's `_parameters` that fetches a released parameter read during forward."""

    def __getitem__(self, key):
        param = dict.__getitem__(self, key)
        if param is not None and getattr(param, "ds_status", None) is not ZeroParamStatus.AVAILABLE:
            unit = unit_of(param)
            if unit is not None and unit.coordinator is not None:
                unit.coordinator.fetch_on_access(unit)
        return param


class Stage3Coordinator:
    """Drives every unit of one model through forward and backward."""

    def __init__(self, root: torch.nn.Module, units: list[ParamUnit],
                 module_units: dict[torch.nn.Module, list[ParamUnit]], policy: FetchPolicy) -> None:
        self.root = root
        self.units = units
        self.module_units = module_units
        self.policy = policy
        self.schedule = FetchSchedule()
        self.in_backward = False
        self.stats = FetchStats()
        self._prefetched: set[ParamUnit] = set()
        self._released_by_grads: set[ParamUnit] = set()
        self._stack: list[torch.nn.Module] = []
        self._hooked: set[int] = set()
        self._handles = []
        for unit in units:
            unit.coordinator = self
            if not unit.persistent and unit.status is not ZeroParamStatus.NOT_AVAILABLE:
                self.stats.live_numel += unit.numel
        self.stats.peak_live_numel = self.stats.live_numel
        self.add_hooks(root)
        for module in module_units:
            self.add_hooks(module)
            if not isinstance(module.__dict__["_parameters"], _ZeroParameterDict):
                module.__dict__["_parameters"] = _ZeroParameterDict(module.__dict__["_parameters"])
        for module in root.modules():
            if getattr(module, EXTERNAL_ATTR, None):
                self.add_hooks(module)

    # -- hooks ------------------------------------------------------------------------
    def add_hooks(self, module: torch.nn.Module) -> None:
        if id(module) in self._hooked:
            return
        self._hooked.add(id(module))
        self._handles.append(module.register_forward_pre_hook(self._pre_forward))
        self._handles.append(module.register_forward_hook(self._post_forward))

    def units_of(self, module: torch.nn.Module) -> list[ParamUnit]:
        units = list(self.module_units.get(module, ()))
        for param in module.__dict__.get(EXTERNAL_ATTR, ()):
            unit = unit_of(param)
            if unit is not None and unit not in units:
                units.append(unit)
        return units

    def release_by_gradients(self, units) -> None:
        """`units` are released once their gradients are reduced; every other unit after its
        module's backward."""
        self._released_by_grads = set(units)

    def _pre_forward(self, module, args):
        if not self._stack and not self.in_backward and module is self.root:
            self._settle()
            self.schedule.begin()
        self._stack.append(module)
        units = self.units_of(module)
        self.fetch(units)
        if torch.is_grad_enabled() and any(self._frozen(u) for u in units):
            return _wrap_inputs(args, lambda: self._release_frozen(module))
        return None

    def _frozen(self, unit: ParamUnit) -> bool:
        """No gradient reduction will release this unit."""
        return not unit.persistent and unit not in self._released_by_grads

    def _release_frozen(self, module) -> None:
        """The module's backward is done: units no gradient releases go now, not at the end."""
        for unit in self.units_of(module):
            if self._frozen(unit) and not unit.holds:
                unit.release()

    def _post_forward(self, module, args, output):
        if self._stack and self._stack[-1] is module:
            self._stack.pop()
        units = self.units_of(module)
        if not self.in_backward:  # a recomputation inside backward keeps them for the backward that follows
            for unit in units:
                self._release_unless_needed(unit, FORWARD)
        if units and torch.is_grad_enabled():
            output = _wrap_outputs(output, lambda: self.fetch(self.units_of(module)))
        return output

    def fetch_on_access(self, unit: ParamUnit) -> None:
        """A released parameter was read as a module attribute; inside forward, gather it."""
        if not self._stack:
            return
        owner = self._stack[-1]
        external = owner.__dict__.setdefault(EXTERNAL_ATTR, [])
        if not any(p is q for p in unit.params for q in external):
            external.extend(unit.params)
        self.fetch([unit])

    # -- the verbs --------------------------------------------------------------------------
    def fetch(self, units: list[ParamUnit]) -> None:
        """Gather `units` (recording the request), prefetching the predicted next ones."""
        phase = BACKWARD if self.in_backward else FORWARD
        pending = []
        for unit in units:
            if unit.persistent:
                continue
            self.schedule.record(unit, phase)
            self._unmark_prefetched(unit)
            unit.start_fetch()
            pending.append(unit)
        if pending:
            self._prefetch()
        for unit in pending:
            unit.fetch()

    def unshard(self, module: torch.nn.Module) -> None:
        """Explicitly gather the units `module` uses (its parameters and externals)."""
        self.fetch(self.units_of(module))

    def reshard(self, module: torch.nn.Module) -> None:
        """Explicitly release the units `module` uses (persistent and held ones stay)."""
        for unit in self.units_of(module):
            if not unit.persistent and not unit.holds:
                unit.release()

    def _release_unless_needed(self, unit: ParamUnit, phase: str) -> None:
        if unit.persistent or unit.holds or unit.status is ZeroParamStatus.NOT_AVAILABLE:
            return
        distance = self.schedule.reuse_distance(unit, phase)
        if distance is not None and distance <= self.policy.max_reuse_distance \
                and self.stats.live_numel <= self.policy.max_live_numel:
            return
        unit.release()

    def _prefetch(self) -> None:
        upcoming = self.schedule.upcoming()
        if not upcoming or self.policy.prefetch_numel <= 0:
            return
        stats = self.stats
        for unit in upcoming:
            if unit.persistent or unit.status is not ZeroParamStatus.NOT_AVAILABLE:
                continue
            if stats.prefetched_numel + unit.numel > self.policy.prefetch_numel \
                    or stats.live_numel + unit.numel > self.policy.max_live_numel:
                break
            self._prefetched.add(unit)
            stats.prefetched_numel += unit.numel
            stats.peak_prefetched_numel = max(stats.peak_prefetched_numel, stats.prefetched_numel)
            stats.prefetches += 1
            unit.start_fetch()

    def _unmark_prefetched(self, unit: ParamUnit) -> None:
        if unit in self._prefetched:
            self._prefetched.discard(unit)
            self.stats.prefetched_numel -= unit.numel

    # -- accounting ------------------------------------------------------------------------
    def on_status(self, unit: ParamUnit, old: ZeroParamStatus, new: ZeroParamStatus) -> None:
        """A unit changed status (called by the unit): keep live and peak counts."""
        if unit.persistent:
            return
        stats = self.stats
        was, now = old is not ZeroParamStatus.NOT_AVAILABLE, new is not ZeroParamStatus.NOT_AVAILABLE
        if old is ZeroParamStatus.NOT_AVAILABLE and new is ZeroParamStatus.INFLIGHT:
            stats.all_gathers += 1
        if now and not was:
            stats.live_numel += unit.numel
            stats.peak_live_numel = max(stats.peak_live_numel, stats.live_numel)
        elif was and not now:
            stats.live_numel -= unit.numel
            self._unmark_prefetched(unit)

    def gathered_bytes(self) -> int:
        """Bytes of full values non-persistent units hold right now (gathered or in flight)."""
        return sum(u.full_bytes() for u in self.units if not u.persistent)

    def reset_peaks(self) -> None:
        self.stats.peak_live_numel = self.stats.live_numel
        self.stats.peak_prefetched_numel = self.stats.prefetched_numel

    # -- step boundaries ----------------------------------------------------------------------
    def begin_backward(self) -> None:
        self.in_backward = True

    def on_grads_reduced(self, unit: ParamUnit) -> None:
        """Every gradient of `unit` is in: its full values are no longer needed this backward."""
        if not unit.persistent and not unit.holds:
            unit.release()

    def end_backward(self) -> None:
        self.in_backward = False
        self._stack.clear()
        self._settle()
        self.schedule.end()

    def _settle(self) -> None:
        """Release every unit a finished pass left gathered (prefetched but unused, frozen)."""
        for unit in self.units:
            if not unit.persistent and not unit.holds and unit.status is not ZeroParamStatus.NOT_AVAILABLE:
                unit.release()

    def refresh_after_step(self) -> None:
        """Shards changed: re-gather every unit that is still available (persistent, held)."""
        for unit in self.units:
            unit.refresh()

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooked.clear()
