"""zero_optimization: the ZeRO stage and every stage 1/2/3 knob, with DeepSpeed's defaults.

Field names are the JSON keys DeepSpeed documents (`stage3_prefetch_bucket_size`, ...);
DeepSpeed's internal short names (`prefetch_bucket_size`) are accepted as aliases and
readable as properties. Deprecated keys migrate into their replacement with a warning.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Union

from pydantic import BeforeValidator, model_validator
from typing_extensions import Annotated

from ._base import AUTO_OK, Bool, Choice, ConfigModel, Float, Int, OptBool, StrList, bad_value
from .messages import warn
from .offload import OffloadOptimizerConfig, OffloadParamConfig

DEFAULT_LEAF_CLASSES = (
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock",
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock",
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock",
)

# keys DeepSpeed 0.19.8 removed; we do not build these features either
REMOVED_ZERO_KEYS = {
    "mics_shard_size": "MiCS sharding was removed in DeepSpeed 0.19",
    "mics_hierarchical_params_gather": "MiCS sharding was removed in DeepSpeed 0.19",
    "zeropp_loco_param": "LoCo-ZeRO++ was removed in DeepSpeed 0.19; drop the key to use plain quantized gradients",
}

# short (DeepSpeed attribute) name -> documented JSON key
_STAGE3_SHORT = {
    "prefetch_bucket_size": "stage3_prefetch_bucket_size",
    "param_persistence_threshold": "stage3_param_persistence_threshold",
    "model_persistence_threshold": "stage3_model_persistence_threshold",
    "max_live_parameters": "stage3_max_live_parameters",
    "max_reuse_distance": "stage3_max_reuse_distance",
    "gather_16bit_weights_on_model_save": "stage3_gather_16bit_weights_on_model_save",
    "module_granularity_threshold": "stage3_module_granularity_threshold",
    "use_all_reduce_for_fetch_params": "stage3_use_all_reduce_for_fetch_params",
    "allgather_sequential": "stage3_allgather_sequential",
}


class LeafModuleConfig(ConfigModel):
    """Modules ZeRO-3 treats as one unit (no hooks inside): by class, name or name suffix."""

    section = "zero_optimization.leaf_module"
    classes: StrList = DEFAULT_LEAF_CLASSES
    names: StrList = ()
    name_suffixes: StrList = ()


IntOrAuto = Annotated[Union[int, str], BeforeValidator(
    lambda v: v if v == "auto" else _positive_int(v)), AUTO_OK]


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected 'auto' or an integer >= 1")
    return value


class ZenFlowConfig(ConfigModel):
    """ZenFlow selective optimizer updates (accepted; not built yet)."""

    section = "zero_optimization.zenflow"
    topk_ratio: Float(gt=0.0, lt=1.0) = 0.1
    select_strategy: Choice("auto", "step", "epoch") = "auto"
    select_interval: IntOrAuto = "auto"
    update_interval: IntOrAuto = "auto"
    overlap_step: Bool = False
    offload: Bool = False
    auto_ratio: Float(ge=0.0, le=1.0) = 0.99
    full_warm_up_rounds: Int() = 0
    pt_reserved_cores_perc: Float(ge=0.0, le=1.0) = 0.5
    steps_per_epoch: Int(optional=True) = None


class ZeroConfig(ConfigModel):
    """ZeRO stage 0-3 and its buckets, thresholds, offload tiers and ZeRO++ switches."""

    section = "zero_optimization"
    aliases = {**{short: long for short, long in _STAGE3_SHORT.items()},
               "stage3_gather_fp16_weights_on_model_save": "stage3_gather_16bit_weights_on_model_save"}
    deprecated = {"stage3_gather_fp16_weights_on_model_save": ""}

    stage: Int(ge=0, le=3) = 0
    contiguous_gradients: Bool = True
    reduce_scatter: Bool = True
    reduce_bucket_size: Int(gt=0) = 500_000_000
    use_multi_rank_bucket_allreduce: Bool = True
    allgather_partitions: Bool = True
    allgather_bucket_size: Int(ge=0) = 500_000_000
    overlap_comm: OptBool = None  # None: DeepSpeed's dynamic default, True only at stage 3
    compute_grad_norm: Bool = True
    load_from_fp32_weights: Bool = True
    elastic_checkpoint: Bool = False
    offload_param: Optional[OffloadParamConfig] = None
    offload_optimizer: Optional[OffloadOptimizerConfig] = None
    zenflow: Optional[ZenFlowConfig] = None
    sub_group_size: Int(ge=0) = 1_000_000_000
    cpu_offload_use_pin_memory: OptBool = None  # deprecated, kept only to be accepted
    stage3_prefetch_bucket_size: Int(ge=0) = 50_000_000
    stage3_param_persistence_threshold: Int(ge=0) = 100_000
    stage3_model_persistence_threshold: Int(ge=0) = sys.maxsize
    stage3_max_live_parameters: Int(ge=0) = 1_000_000_000
    stage3_max_reuse_distance: Int(ge=0) = 1_000_000_000
    stage3_gather_16bit_weights_on_model_save: Bool = False
    stage3_module_granularity_threshold: Int() = 0
    stage3_use_all_reduce_for_fetch_params: Bool = False
    stage3_allgather_sequential: Bool = False
    ignore_unused_parameters: Bool = True
    legacy_stage1: Bool = False
    round_robin_gradients: Bool = False
    parameter_alignment: Bool = False
    zero_hpz_partition_size: Int(ge=0) = 1
    zero_quantized_weights: Bool = False
    zero_quantized_nontrainable_weights: Bool = False
    zero_quantized_gradients: Bool = False
    memory_efficient_linear: Bool = True
    pipeline_loading_checkpoint: Bool = False
    override_module_apply: Bool = True
    log_trace_cache_warnings: Bool = False
    enable_sanity_checks: Bool = False
    save_muon_momentum_buffer_in_memory: Bool = False
    leaf_module: LeafModuleConfig = LeafModuleConfig()

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """cpu_offload / cpu_offload_param (bool) -> offload_optimizer / offload_param (device cpu)."""
        for key, message in REMOVED_ZERO_KEYS.items():
            if key in data:
                raise bad_value(data[key], f"not supported: {message}", key)
        for old, new in (("cpu_offload", "offload_optimizer"), ("cpu_offload_param", "offload_param")):
            if old not in data:
                continue
            value = data.pop(old)
            if value is not None and not isinstance(value, bool):
                raise bad_value(value, "expected true or false", old)
            warn(f"config key 'zero_optimization.{old}' is deprecated, use "
                 f"'zero_optimization.{new}': {{\"device\": \"cpu\"}} instead")
            if new in data and data[new] is not None:
                raise bad_value(value, f"give either '{old}' (deprecated) or '{new}', not both", old)
            if value:
                data[new] = {"device": "cpu"}
        if data.get("cpu_offload_use_pin_memory") is not None:
            warn("config key 'zero_optimization.cpu_offload_use_pin_memory' is deprecated, use "
                 "'pin_memory' inside 'offload_param' or 'offload_optimizer' instead")
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> "ZeroConfig":
        if self.overlap_comm is None:
            object.__setattr__(self, "overlap_comm", self.stage == 3)
        if not self.compute_grad_norm and self.stage not in (1, 2):
            raise bad_value(False, f"false is supported only with stage 1 or 2 (stage is {self.stage})",
                            "compute_grad_norm")
        if self.offload_optimizer is not None and self.offload_optimizer.ratio < 1.0 and self.stage != 3:
            raise bad_value(self.offload_optimizer.ratio, f"partial offload (< 1.0) needs stage 3, "
                            f"stage is {self.stage}", "offload_optimizer.ratio")
        if self.offload_param is not None and self.offload_param.enabled and self.stage != 3:
            # DeepSpeed ignores it below stage 3; real configs carry it, so warn instead of failing
            warn(f"zero_optimization.offload_param is ignored at stage {self.stage} (parameters are "
                 "partitioned, hence offloadable, only at stage 3)")
        if self.stage == 3 and self.elastic_checkpoint:
            warn("zero_optimization.elastic_checkpoint is not supported at stage 3; "
                 "checkpoints reshard at load time anyway")
        return self

    @property
    def enabled(self) -> bool:
        return self.stage > 0

    @property
    def offload_optimizer_device(self) -> str:
        return self.offload_optimizer.device if self.offload_optimizer else "none"

    @property
    def offload_param_device(self) -> str:
        return self.offload_param.device if self.offload_param else "none"


def _short_name_property(long_name: str) -> property:
    return property(lambda self: getattr(self, long_name), doc=f"DeepSpeed's name for `{long_name}`.")


for _short, _long in _STAGE3_SHORT.items():
    setattr(ZeroConfig, _short, _short_name_property(_long))
