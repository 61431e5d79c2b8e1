"""ZeroSpeedConfig: the whole DeepSpeed JSON config as one frozen, validated model.

Attribute names are DeepSpeed's JSON keys. Cross-section rules (fp16 xor bf16, batch
divisibility, options that need a ZeRO stage) live here; per-section rules live in the
section modules. `resolved()` fills "auto" values and completes the batch triple.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from pydantic import PrivateAttr, ValidationError, model_validator

from zerospeed.errors import ConfigError

from . import auto as _auto
from ._base import Bool, Choice, ConfigModel, Float, Int, bad_value
from .activation_checkpointing import ActivationCheckpointingConfig
from .aio import AioConfig
from .batch import GAS, MICRO, TBS, check_divisible, complete_batch
from .checkpoint import CheckpointConfig
from .comms import CommsLoggerConfig
from .data_efficiency import DataEfficiencyConfig
from .features import (AutotuningConfig, CompileConfig, ExpertParallelConfig, HybridEngineConfig,
                       TensorParallelConfig, WeightQuantizationConfig)
from .messages import from_validation_error, info, warn
from .monitor import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
from .optimizer import OptimizerConfig
from .pipeline import PipelineConfig
from .precision import BF16Config, CommDtype, DataTypesConfig, FP16Config, TorchAutocastConfig
from .profiler import FlopsProfilerConfig, TimersConfig
from .scheduler import SchedulerConfig
from .zero import ZeroConfig

_REMOVED = "removed in DeepSpeed 0.19 and not built by zerospeed"
# top-level keys DeepSpeed 0.19.8 rejects as removed; we reject them too (see COMPATIBILITY.md)
REMOVED_KEYS = {
    "amp": f"NVIDIA Apex AMP was {_REMOVED}; use 'fp16', 'bf16' or 'torch_autocast'",
    "elasticity": f"elastic training was {_REMOVED}; set the batch keys directly",
    "curriculum_learning": f"top-level curriculum_learning was {_REMOVED}; use "
                           "'data_efficiency.data_sampling.curriculum_learning'",
    "compression_training": f"the compression library was {_REMOVED}",
    "sparse_gradients": f"sparse embedding-gradient compression was {_REMOVED}; embeddings built with "
                        "sparse=True need no flag",
    "quantize_training": f"MoQ quantize_training was {_REMOVED}",
    "eigenvalue": f"eigenvalue MoQ was {_REMOVED}",
    "sparse_attention": f"sparse attention was {_REMOVED}",
    "nebula": f"Nebula checkpointing was {_REMOVED}",
    "graph_harvesting": f"graph harvesting was {_REMOVED}",
    "progressive_layer_drop": f"progressive layer drop was {_REMOVED}",
}
# sections parsed and checked but without effect yet; one warning each when active
NOT_BUILT_YET = ("autotuning", "data_efficiency", "hybrid_engine", "compile", "tensor_parallel",
                 "expert_parallel", "weight_quantization", "datastates_ckpt", "torch_autocast")


class ZeroSpeedConfig(ConfigModel):
    """Every top-level key DeepSpeed 0.19.8 accepts, with its defaults."""

    aliases = {"bfloat16": "bf16"}
    deprecated = {"bfloat16": ""}

    # batch: "auto" until resolved(); None when absent (derived by resolved())
    train_batch_size: Int(optional=True, auto=True, gt=0) = None
    train_micro_batch_size_per_gpu: Int(optional=True, auto=True, gt=0) = None
    gradient_accumulation_steps: Int(optional=True, auto=True, gt=0) = None
    managed_gradient_accumulation: Bool = True
    optimizer: Optional[OptimizerConfig] = None
    scheduler: Optional[SchedulerConfig] = None
    fp16: FP16Config = FP16Config()
    bf16: BF16Config = BF16Config()
    torch_autocast: TorchAutocastConfig = TorchAutocastConfig()
    data_types: DataTypesConfig = DataTypesConfig()
    gradient_clipping: Float(ge=0.0) = 1.0
    prescale_gradients: Bool = False
    gradient_predivide_factor: Float(gt=0.0) = 1.0
    gradient_allreduce_op: Choice("mean", "sum") = "mean"
    communication_data_type: CommDtype = None
    seq_parallel_communication_data_type: CommDtype = "fp32"
    disable_allgather: Bool = False
    zero_optimization: ZeroConfig = ZeroConfig()
    zero_allow_untested_optimizer: Bool = False
    zero_force_ds_cpu_optimizer: Bool = True
    allgather_size: Int(optional=True, ge=0) = None  # only with the legacy "zero_optimization": true
    aio: AioConfig = AioConfig()
    activation_checkpointing: ActivationCheckpointingConfig = ActivationCheckpointingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    steps_per_print: Int(optional=True, gt=0) = None
    wall_clock_breakdown: Bool = False
    memory_breakdown: Bool = False
    dump_state: Bool = False
    disable_python_gc: Bool = False
    dataloader_drop_last: Bool = False
    log_level: Optional[str] = None
    tensorboard: TensorBoardConfig = TensorBoardConfig()
    csv_monitor: CSVConfig = CSVConfig()
    wandb: WandbConfig = WandbConfig()
    comet: CometConfig = CometConfig()
    comms_logger: CommsLoggerConfig = CommsLoggerConfig()
    flops_profiler: FlopsProfilerConfig = FlopsProfilerConfig()
    timers: TimersConfig = TimersConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    data_efficiency: DataEfficiencyConfig = DataEfficiencyConfig()
    autotuning: AutotuningConfig = AutotuningConfig()
    hybrid_engine: HybridEngineConfig = HybridEngineConfig()
    compile: CompileConfig = CompileConfig()
    tensor_parallel: TensorParallelConfig = TensorParallelConfig()
    expert_parallel: ExpertParallelConfig = ExpertParallelConfig()
    weight_quantization: Optional[WeightQuantizationConfig] = None
    datastates_ckpt: Any = None
    use_data_before_expert_parallelism: Bool = False
    vocabulary_size: Int(optional=True, gt=0) = None
    sequence_parallel_size: Int(optional=True, gt=0) = None
    data_parallel_size: Int(optional=True, gt=0) = None

    _source: dict = PrivateAttr(default_factory=dict)
    _autos: dict = PrivateAttr(default_factory=dict)  # canonical path -> raw key path
    _auto_values: dict = PrivateAttr(default_factory=dict)
    _world_size: Optional[int] = PrivateAttr(default=None)

    @classmethod
    def migrate(cls, data: dict) -> dict:
        for key, message in REMOVED_KEYS.items():
            if key in data:
                raise bad_value(data[key], f"not supported: {message}", key)
        if isinstance(data.get("zero_optimization"), bool):
            # DeepSpeed's oldest format: "zero_optimization": true means stage 1
            enabled = data["zero_optimization"]
            warn('"zero_optimization": true/false is deprecated; use "zero_optimization": {"stage": 1}')
            zero: dict[str, Any] = {"stage": 1 if enabled else 0}
            if enabled:
                zero["allgather_bucket_size"] = data.get("allgather_size", 500_000_000)
            data["zero_optimization"] = zero
        return data

    @model_validator(mode="after")
    def _cross_section_checks(self) -> "ZeroSpeedConfig":
        if self.fp16.enabled and self.bf16.enabled:
            raise bad_value(True, "fp16 and bf16 cannot both be enabled; allowed: at most one of "
                                  "fp16.enabled, bf16.enabled", "fp16.enabled")
        stage = self.zero_optimization.stage
        for flag, section in (("fp16_master_weights_and_grads", self.fp16),
                              ("bf16_master_weights_and_grads", self.bf16),
                              ("bf16_optimizer_states", self.bf16)):
            if getattr(section, flag) and stage not in (1, 2, 3):
                raise bad_value(True, f"needs zero_optimization.stage 1, 2 or 3 (stage is {stage})",
                                f"{section.section}.{flag}")
        if self.bf16.bf16_optimizer_states and not self.bf16.bf16_master_weights_and_grads:
            raise bad_value(True, "needs bf16.bf16_master_weights_and_grads: true", "bf16.bf16_optimizer_states")
        if self.gradient_allreduce_op == "sum":
            blocker = ("zero_optimization.stage 3" if stage == 3 else
                       "zero_optimization.zenflow" if self.zero_optimization.zenflow else
                       "compile.deepcompile" if self.compile.deepcompile else None)
            if blocker:
                raise bad_value("sum", f"not supported with {blocker}; allowed: 'mean'", "gradient_allreduce_op")
        batch = (self.train_batch_size, self.train_micro_batch_size_per_gpu, self.gradient_accumulation_steps)
        if all(isinstance(v, int) for v in batch):
            check_divisible(*batch)
        if self.flops_profiler.enabled and not self.wall_clock_breakdown:
            object.__setattr__(self, "wall_clock_breakdown", True)  # DeepSpeed ORs the two
        if self.vocabulary_size and self.vocabulary_size % 8:
            warn(f"vocabulary_size {self.vocabulary_size} is not a multiple of 8; tensor cores prefer it aligned")
        return self

    # ---- derived views the engine and DeepSpeedConfig read -------------------------------
    @property
    def zero_enabled(self) -> bool:
        return self.zero_optimization.stage > 0

    @property
    def auto_keys(self) -> tuple[str, ...]:
        """Dotted paths that were "auto" in the source (resolved or defaulted since)."""
        return tuple(self._autos)

    @property
    def world_size(self) -> Optional[int]:
        """The data-parallel world size `resolved()` used; None before."""
        return self._world_size

    def unresolved_keys(self) -> list[str]:
        """Keys still "auto" that have no default: batch sizes and optimizer/scheduler params."""
        out = [name for name in (TBS, MICRO, GAS) if getattr(self, name) == "auto"]
        out += [path for path in self._autos if _auto.is_pending(path) and self._value_at(path) == "auto"]
        return out

    def _value_at(self, path: str) -> Any:
        try:
            return _auto.get_attr_path(self, path)
        except (AttributeError, KeyError):
            return None

    def resolved(self, world_size: int, auto_values: Optional[dict[str, Any]] = None) -> "ZeroSpeedConfig":
        """A new config with "auto" values filled and the batch triple completed as ints.

        `auto_values` maps dotted paths ("optimizer.params.lr") to values; entries for keys
        that are not "auto" in the config are ignored (callers pass everything they know).
        """
        merged = {**self._auto_values, **(auto_values or {})}
        source = copy.deepcopy(self._source)
        for path, raw_path in self._autos.items():
            if path in merged:
                _auto.set_path(source, raw_path, merged[path])
        config = build(source, auto_values=merged)
        batch = [getattr(config, name) for name in (TBS, MICRO, GAS)]
        unresolved = [p for p in config.unresolved_keys() if p not in (TBS, MICRO, GAS)]
        known = [None if value == "auto" else value for value in batch]
        if known[0] is None and known[1] is None:
            unresolved = [n for n, v in zip((TBS, MICRO), batch) if v == "auto"] + unresolved
        if unresolved:
            raise ConfigError("unresolved \"auto\" values: " + ", ".join(unresolved)
                              + "; pass them in auto_values, e.g. resolved(world_size, {'" + unresolved[0]
                              + "': ...}), or write the values into the config")
        tbs, micro, gas = complete_batch(*known, world_size=world_size)
        out = config.model_copy(update={TBS: tbs, MICRO: micro, GAS: gas})
        out._world_size = world_size
        return out


def build(source: dict, auto_values: Optional[dict[str, Any]] = None) -> ZeroSpeedConfig:
    """Validate a raw dict (a private copy is kept for resolved()); ConfigError on any problem."""
    if not isinstance(source, dict):
        raise ConfigError(f"config must be a JSON object {{...}}, got {type(source).__name__}")
    cleaned, autos = _auto.find_autos(ZeroSpeedConfig, source)
    try:
        config = ZeroSpeedConfig.model_validate(cleaned)
    except ValidationError as error:
        raise from_validation_error(error) from None
    config._source = copy.deepcopy(source)
    config._autos = autos
    config._auto_values = dict(auto_values or {})
    for path in autos:
        if not _auto.is_pending(path) and path not in (TBS, MICRO, GAS):
            info(f'config "{path}": "auto" -> {config._value_at(path)!r} (DeepSpeed default; '
                 "pass auto_values to resolved() to choose)")
    _warn_not_built(source)
    return config


def _warn_not_built(source: dict) -> None:
    for key in NOT_BUILT_YET:
        value = source.get(key)
        if value is None or value is False or (isinstance(value, dict) and value.get("enabled") is False):
            continue
        warn(f"config section '{key}' is accepted but zerospeed does not implement it yet; it has no effect")
    zenflow = (source.get("zero_optimization") or {}) if isinstance(source.get("zero_optimization"), dict) else {}
    if zenflow.get("zenflow") is not None:
        warn("config key 'zero_optimization.zenflow' is accepted but zerospeed does not implement it yet")
