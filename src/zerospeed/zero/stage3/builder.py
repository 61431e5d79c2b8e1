"""Assemble stage 3: units from the module tree, persistence, reducer, masters, coordinator.

A unit is the direct parameters of one module, in `named_modules()` order (a tied
parameter belongs to the first module that holds it; every module that holds it fetches
its unit). Parameters of at most `stage3_param_persistence_threshold` elements (within a
model-wide budget of `stage3_model_persistence_threshold`) form one persistent unit that
stays gathered on every rank, so small LayerNorm weights and biases cost no collective
per use.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Callable

import torch

from zerospeed.errors import ConfigError
from zerospeed.runtime.precision import LossScaler, PrecisionPolicy
from zerospeed.zero.grad_reducer import ReducePlan
from zerospeed.zero.offload import build_optimizer_tier, build_param_tier
from zerospeed.zero.partitioned_optimizer import OffloadPolicy
from zerospeed.zero.stage3.coordinator import FetchPolicy, Stage3Coordinator
from zerospeed.zero.stage3.grads import UnitGradReducer
from zerospeed.zero.stage3.layout import UnitLayout
from zerospeed.zero.stage3.optimizer import Stage3Optimizer, UnitMaster
from zerospeed.zero.stage3.params import ParamUnit, collect_shard, logical_numel
from zerospeed.zero.stage3.state_dict import guard_state_dict


@dataclass(frozen=True)
class Stage3Settings:
    """The stage-3 knobs of zero_optimization, in elements."""

    persistence_threshold: int = 100_000
    model_persistence_threshold: int = sys.maxsize
    fetch: FetchPolicy = FetchPolicy()
    offload_param: str = "none"  # "none" | "cpu" | "nvme"
    pin_memory: bool = False

    @classmethod
    def from_config(cls, zero) -> "Stage3Settings":
        if zero is None:
            return cls()
        offload = zero.offload_param
        device = offload.device if offload is not None else "none"
        return cls(
            persistence_threshold=int(zero.stage3_param_persistence_threshold),
            model_persistence_threshold=int(zero.stage3_model_persistence_threshold),
            fetch=FetchPolicy(
                prefetch_numel=int(zero.stage3_prefetch_bucket_size),
                max_live_numel=int(zero.stage3_max_live_parameters),
                max_reuse_distance=int(zero.stage3_max_reuse_distance),
            ),
            offload_param=device,
            pin_memory=bool(getattr(offload, "pin_memory", False)) if offload is not None else False,
        )


def plan_units(module: torch.nn.Module, settings: Stage3Settings):
    """(persistent params, [(module name, module, params)], module -> all its direct params)."""
    seen: set[int] = set()
    persistent: list[tuple[str, torch.nn.Parameter]] = []
    owned: list[tuple[str, torch.nn.Module, list[tuple[str, torch.nn.Parameter]]]] = []
    budget = settings.model_persistence_threshold
    for module_name, sub in module.named_modules():
        mine = []
        for param_name, param in sub.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            numel = logical_numel(param)
            if numel <= settings.persistence_threshold and numel <= budget:
                budget -= numel
                persistent.append((name, param))
            else:
                mine.append((name, param))
        if mine:
            owned.append((module_name or type(module).__name__, sub, mine))
    return persistent, owned


def build_stage3_optimizer(
    module: torch.nn.Module,
    groups: list[dict],
    make_inner: Callable[[list[dict]], torch.optim.Optimizer],
    *,
    policy: PrecisionPolicy,
    loss_scaler: LossScaler,
    clip_norm: float,
    offload: OffloadPolicy,
    world_size: int,
    rank: int,
    predivide: float,
    accelerator,
    settings: Stage3Settings,
    group=None,
) -> Stage3Optimizer:
    """Partition `module`'s parameters into units and build the optimizer that steps their shards."""
    names = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    group_of = {id(p): index for index, g in enumerate(groups) for p in g["params"]}
    stray = [p for g in groups for p in g["params"] if id(p) not in names]
    if stray:
        raise ConfigError(
            f"ZeRO stage 3: {len(stray)} optimized parameters (first of shape {tuple(stray[0].shape)}) are not "
            "registered in the model; stage 3 partitions the model's parameters, so register them as module attributes"
        )
    compute_device = next((p.device for p in module.parameters()), torch.device("cpu"))
    shard_device = torch.device("cpu") if settings.offload_param in ("cpu", "nvme") else compute_device
    persistent, owned = plan_units(module, settings)
    shard_numel = sum(-(-logical_numel(p) // world_size) for p in module.parameters())
    param_tier = build_param_tier(offload, settings.offload_param, group=group,
                                  expected_bytes=shard_numel * torch.empty((), dtype=policy.param_dtype).element_size())
    tier = build_optimizer_tier(offload, expected_numel=shard_numel, group=group)

    units: list[ParamUnit] = []
    initial: dict[int, torch.Tensor] = {}
    unit_of_param: dict[int, ParamUnit] = {}

    def make_unit(label, members, is_persistent):
        params = [p for _, p in members]
        layout = UnitLayout.of([logical_numel(p) for p in params], world_size)
        fp32 = collect_shard(params, layout, rank, torch.float32, shard_device)
        working = fp32 if policy.param_dtype == torch.float32 else fp32.to(policy.param_dtype)
        if settings.offload_param == "cpu" and settings.pin_memory:
            working = accelerator.pin_memory(working)
        unit = param_tier.make_unit(params, [names.get(id(p), n) for n, p in members], label, working, rank=rank,
                                    world_size=world_size, compute_device=compute_device, persistent=is_persistent,
                                    group=group)
        if working is not fp32:
            initial[id(unit)] = fp32
        units.append(unit)
        for p in params:
            unit_of_param[id(p)] = unit
        return unit

    if persistent:
        make_unit("<persistent parameters>", persistent, True)
    for label, _, members in owned:
        make_unit(label, members, False)

    module_units: dict[torch.nn.Module, list[ParamUnit]] = {}
    for sub in module.modules():
        found = []
        for param in sub.parameters(recurse=False):
            unit = unit_of_param[id(param)]
            if not unit.persistent and unit not in found:
                found.append(unit)
        if found:
            module_units[sub] = found
        guard_state_dict(sub)

    trainable = [u for u in units if any(id(p) in group_of for p in u.params)]
    trainable_ids = set(group_of)
    ignored = [p for u in units for p in u.params if p.requires_grad and id(p) not in trainable_ids]
    coordinator = Stage3Coordinator(module, units, module_units, settings.fetch)
    masters = []
    for unit in trainable:
        members = [i for i, p in enumerate(unit.params) if id(p) in trainable_ids]
        masters.append(UnitMaster(unit, members, offload, accelerator, initial.get(id(unit)),
                                  param_offloaded=settings.offload_param == "cpu", param_tier=param_tier))
        tier.add(masters[-1])  # NVMe: written to its swap file, memory released
        param_tier.seal([unit])  # NVMe: the master has its values, the shard can go to disk
        unit.on_shard_written = functools.partial(_refresh_master, tier, masters[-1])
    param_tier.seal(units)
    # Gradient partitions come after masters so that, with NVMe, shards leave memory first.
    plan = ReducePlan(stage=3, world_size=world_size, accum_dtype=policy.grad_accum_dtype,
                      comm_dtype=policy.comm_dtype, predivide=predivide, postdivide=world_size / predivide)
    reducer = UnitGradReducer(trainable, trainable_ids, plan, coordinator.on_grads_reduced, ignored)
    coordinator.release_by_gradients(state.unit for state in reducer.states if state.trainable)
    master_groups = []
    for group_index, group_options in enumerate(groups):
        options = {k: v for k, v in group_options.items() if k != "params"}
        pieces = [piece for m in masters for index, piece in zip(m.members, m.pieces)
                  if group_of[id(m.unit.params[index])] == group_index]
        master_groups.append({"params": pieces, **options})
    for unit in units:
        if unit.persistent:
            unit.fetch()
    inner = make_inner(master_groups)
    return Stage3Optimizer(inner, masters, reducer, loss_scaler, clip_norm, coordinator, units, tier=tier,
                           param_tier=param_tier)


def _refresh_master(tier, master) -> None:
    """A unit's shard was edited in place (GatheredParameters modifier): update its master."""
    with tier.materialized([master]):
        master.refresh_from_shard()
