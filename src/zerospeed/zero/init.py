"""`zero.Init`, `GatheredParameters` and external parameters: DeepSpeed's stage-3 user API.

`Init` partitions each parameter as soon as the module that created it is complete (when
it is attached to its parent, or when the context exits), so a model larger than one
rank's memory can be built: at any time at most one module's full weights exist. Each
parameter is broadcast from rank 0 first (every rank then holds a piece of the same
weights) and keeps only `param.ds_tensor`, ceil(numel / world_size) elements.
`GatheredParameters` makes full values available inside its block; with
`modifier_rank`, that rank's changes are broadcast and re-partitioned on exit.

Inside `Init`, `Module.apply(fn)` (how most models run their weight init from the parent's
`__init__`, after the children are already partitioned) calls `fn` on each module with that
module's own parameters gathered, then keeps rank 0's values, as DeepSpeed does; without it
`fn` would write into empty placeholders and the initialization would be lost.
"""

from __future__ import annotations

import functools

import torch

from zerospeed import comm
from zerospeed.errors import ConfigError
from zerospeed.utils.logging import logger
from zerospeed.zero.stage3.coordinator import EXTERNAL_ATTR
from zerospeed.zero.stage3.layout import UnitLayout
from zerospeed.zero.stage3.params import ParamUnit, ZeroParamStatus, collect_shard, is_partitioned, unit_of
from zerospeed.zero.stage3.state_dict import guard_state_dict

_module_hooks = torch.nn.modules.module
_apply_patch = {"depth": 0, "original": None}


def _gathering(fn):
    """`fn(module)` with the module's own partitioned parameters whole; rank 0's result is kept."""
    if getattr(fn, "_zerospeed_gathering", False):
        return fn

    @functools.wraps(fn)
    def gathering(module: torch.nn.Module):
        params = [p for p in module.parameters(recurse=False) if is_partitioned(p)]
        if not params:
            return fn(module)
        with GatheredParameters(params, modifier_rank=0):
            return fn(module)

    gathering._zerospeed_gathering = True
    return gathering


def _patch_module_apply() -> None:
    if _apply_patch["depth"] == 0:
        original = _apply_patch["original"] = torch.nn.Module.apply

        @functools.wraps(original)
        def apply(self, fn):
            return original(self, _gathering(fn))

        torch.nn.Module.apply = apply
    _apply_patch["depth"] += 1


def _unpatch_module_apply() -> None:
    _apply_patch["depth"] -= 1
    if _apply_patch["depth"] == 0:
        torch.nn.Module.apply = _apply_patch["original"]
        _apply_patch["original"] = None


def _from_config(config) -> tuple[torch.dtype | None, str | None]:
    """(param dtype, offload_param device) a DeepSpeed config implies for `Init`'s defaults."""
    if config is None:
        return None, None
    from zerospeed.config import load_config

    parsed = load_config(config)
    dtype = torch.float16 if parsed.fp16.enabled else torch.bfloat16 if parsed.bf16.enabled else None
    device = parsed.zero_optimization.offload_param_device
    return dtype, None if device == "none" else device


class Init:
    """Partition parameters as modules are constructed (DeepSpeed's `zero.Init`)."""

    def __init__(self, module: torch.nn.Module | None = None, data_parallel_group=None, mem_efficient_linear: bool = True,
                 remote_device: str | None = None, pin_memory: bool = False, config_dict_or_path=None, config=None,
                 enabled: bool = True, dtype: torch.dtype | None = None, mpu=None, **kwargs) -> None:
        if config_dict_or_path is not None and config is not None:
            raise ConfigError("zero.Init: give config_dict_or_path or config, not both")
        if remote_device not in (None, "none", "cpu", "nvme"):
            raise ConfigError(f"zero.Init(remote_device={remote_device!r}): allowed None (the config's "
                              "offload_param.device, else the compute device), 'none', 'cpu', 'nvme'")
        self.enabled = enabled
        self.group = data_parallel_group
        config_dtype, config_device = _from_config(config_dict_or_path if config_dict_or_path is not None else config)
        self.dtype = dtype or config_dtype
        self.remote_device = remote_device if remote_device is not None else config_device
        if self.remote_device == "nvme" and enabled:
            # The NVMe tier belongs to the engine (its swap files, sizes and aio settings come from
            # the config at initialize()); until then each rank's shards wait in CPU memory.
            logger.info("zero.Init(remote_device='nvme'): shards are kept in CPU memory until "
                        "zerospeed.initialize() moves them to the NVMe tier of offload_param")
        self.pin_memory = pin_memory
        self._pending: dict[int, tuple[torch.nn.Module, str, torch.nn.Parameter]] = {}
        self._handles = []
        if enabled and module is not None:
            self._partition_all(module)

    # -- the context ------------------------------------------------------------------------
    def __enter__(self):
        if self.enabled:
            if not comm.is_initialized():
                comm.init_distributed()
            self._handles = [
                _module_hooks.register_module_parameter_registration_hook(self._on_parameter),
                _module_hooks.register_module_module_registration_hook(self._on_child),
            ]
            _patch_module_apply()
        return self

    def __exit__(self, *exc) -> None:
        if self._handles:
            _unpatch_module_apply()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if exc[0] is None:
            for module, name, param in list(self._pending.values()):
                self._partition(module, name, param)
        self._pending.clear()

    def _on_parameter(self, module, name, param):
        if param is not None and not is_partitioned(param):
            self._pending[id(param)] = (module, name, param)
        return None

    def _on_child(self, parent, name, child):
        if child is None:
            return None
        for sub in child.modules():
            for param_name, param in sub.named_parameters(recurse=False):
                entry = self._pending.pop(id(param), None)
                if entry is not None:
                    self._partition(sub, param_name, param)
        return None

    def _partition_all(self, module: torch.nn.Module) -> None:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not is_partitioned(param):
                    self._partition(sub, name, param)

    # -- one parameter ------------------------------------------------------------------------
    def _partition(self, module: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
        if is_partitioned(param):
            return
        world, rank = comm.get_world_size(self.group), comm.get_rank(self.group)
        data = param.data
        if self.dtype is not None and data.is_floating_point():
            data = data.to(self.dtype)
        if world > 1:
            data = data.contiguous()
            comm.broadcast(data, comm.get_global_rank(self.group, 0), group=self.group)
        param.data = data
        device = torch.device("cpu") if self.remote_device in ("cpu", "nvme") else data.device
        layout = UnitLayout.of([param.numel()], world)
        shard = collect_shard([param], layout, rank, data.dtype, device)
        if self.pin_memory and device.type == "cpu" and torch.cuda.is_available():
            shard = shard.pin_memory()
        ParamUnit([param], [name], type(module).__name__, shard, rank=rank, world_size=world,
                  compute_device=data.device, group=self.group)
        guard_state_dict(module)


class GatheredParameters:
    """Full parameter values inside the block; `modifier_rank`'s changes are kept on exit."""

    def __init__(self, params, modifier_rank: int | None = None, fwd_module=None, enabled: bool = True) -> None:
        if isinstance(params, torch.Tensor):
            params = [params]
        self.params = [p for p in (params or []) if is_partitioned(p)]
        self.modifier_rank = modifier_rank
        self.enabled = enabled and bool(self.params)
        units: dict[int, ParamUnit] = {}
        for param in self.params:
            unit = unit_of(param)
            units.setdefault(id(unit), unit)
        # the same order on every rank: the gathers are collectives
        self.units = sorted(units.values(), key=lambda u: min(p.ds_id for p in u.params))
        self._was_available: list[bool] = []

    def __enter__(self):
        if not self.enabled:
            return self
        self._was_available = [u.status is ZeroParamStatus.AVAILABLE for u in self.units]
        for unit in self.units:
            unit.fetch()
            unit.holds += 1
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        try:
            if self.modifier_rank is not None and exc[0] is None:
                source = comm.get_global_rank(self.units[0].group, self.modifier_rank) if comm.get_world_size() > 1 else 0
                for unit in self.units:
                    if comm.get_world_size(unit.group) > 1:
                        for param in unit.params:
                            if not param.data.is_contiguous():
                                param.data = param.data.contiguous()
                            comm.broadcast(param.data, source, group=unit.group)
                    unit.write_full_to_shard()
        finally:
            for unit, was_available in zip(self.units, self._was_available):
                unit.holds -= 1
                if not was_available and not unit.holds and not unit.persistent:
                    unit.release()


def register_external_parameter(module: torch.nn.Module, parameter: torch.nn.Parameter) -> None:
    """Gather `parameter` whenever `module` runs (it uses a parameter another module owns)."""
    if not isinstance(parameter, torch.nn.Parameter):
        raise ConfigError(f"register_external_parameter: expected a torch.nn.Parameter, got {type(parameter).__name__}")
    external = module.__dict__.setdefault(EXTERNAL_ATTR, [])
    if not any(p is parameter for p in external):
        external.append(parameter)
    unit = unit_of(parameter)
    if unit is not None and unit.coordinator is not None:
        unit.coordinator.add_hooks(module)


def unregister_external_parameter(module: torch.nn.Module, parameter: torch.nn.Parameter) -> None:
    external = module.__dict__.get(EXTERNAL_ATTR, [])
    module.__dict__[EXTERNAL_ATTR] = [p for p in external if p is not parameter]
