"""Sections for DeepSpeed features zerospeed does not build yet: parsed and checked, no effect.

They exist so that real configs load unchanged (one warning names each active section,
see model.py). Keys and defaults are DeepSpeed 0.19.8's; values whose meaning belongs to
the unbuilt feature are kept loosely typed (`Any`) rather than guessed at.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import create_model

from ._base import Bool, Choice, ConfigModel, FreeDict, FrozenDict, Int


class AutotuningConfig(ConfigModel):
    section = "autotuning"
    aliases = {"start_step": "start_profile_step", "end_step": "end_profile_step"}
    enabled: Bool = False
    fast: Bool = True
    results_dir: str = "autotuning_results"
    exps_dir: str = "autotuning_exps"
    overwrite: Bool = True
    start_profile_step: Int(ge=0) = 3
    end_profile_step: Int(ge=0) = 5
    metric: Choice("latency", "throughput", "flops", "forward", "step") = "throughput"
    metric_path: Optional[str] = None
    tuner_type: Choice("gridsearch", "random", "model_based") = "gridsearch"
    tuner_early_stopping: Int(ge=0) = 5
    tuner_num_trials: Int(ge=1) = 50
    arg_mappings: Optional[FreeDict] = None
    model_info: Optional[FreeDict] = None
    model_info_path: Optional[str] = None
    mp_size: Int(ge=1) = 1
    max_train_batch_size: Int(optional=True, ge=1) = None
    min_train_batch_size: Int(ge=1) = 1
    max_train_micro_batch_size_per_gpu: Int(ge=1) = 1024
    min_train_micro_batch_size_per_gpu: Int(ge=1) = 1
    num_tuning_micro_batch_sizes: Int(ge=1) = 3


class HybridEngineConfig(ConfigModel):
    section = "hybrid_engine"
    enabled: Bool = False
    max_out_tokens: Int(gt=0) = 512
    inference_tp_size: Int(ge=1) = 1
    release_inference_cache: Bool = False
    pin_parameters: Bool = True
    tp_gather_partition_size: Int(ge=1) = 8
    enable_cuda_graph: Bool = False


class CompileConfig(ConfigModel):
    section = "compile"
    deepcompile: Bool = False
    autoep_non_moe: Bool = False
    free_activation: Bool = False
    free_activation_threshold: Int(ge=0) = 10 * 1024 * 1024
    offload_activation: Bool = False
    offload_activation_pin_memory: Bool = True
    offload_opt_states: Bool = False
    double_buffer: Bool = True
    symmetric_memory: Bool = False
    debug_log: Bool = False
    offload_parameters: Bool = False
    sync_before_reduce: Bool = False
    sync_after_reduce: Bool = False
    sync_before_allgather: Bool = False
    sync_after_allgather: Bool = False
    keep_int_input_tensors: Bool = True
    keep_all_input_tensors: Bool = False
    passes: Optional[tuple[Literal["z1", "z3", "autosp", "autotp"], ...]] = None


class TPConfig(ConfigModel):
    section = "tensor_parallel.tp"
    tp_size: Int(ge=1) = 1
    tp_grain_size: Int(ge=1) = 1
    mpu: Any = None
    tp_group: Any = None


class TensorParallelConfig(ConfigModel):
    section = "tensor_parallel"
    aliases = {"tp": "tensor_parallel", "kernel_inject": "replace_with_kernel_inject"}
    dtype: Any = "fp16"
    autotp_size: Int(ge=0) = 0
    tp_overlap_comm: Bool = False
    vocab_parallel_lm_head: Optional[bool] = None
    vocab_parallel_ce_backend: Choice("torch", "liger") = "torch"
    tensor_parallel: TPConfig = TPConfig()
    injection_policy_tuple: Any = None
    partition_config: Optional[FreeDict] = None
    preset_model: Optional[str] = None
    keep_module_on_host: Bool = False
    replace_with_kernel_inject: Bool = False


class WeightQuantizationConfig(ConfigModel):
    section = "weight_quantization"
    enabled: Bool = True
    num_bits: Int(ge=1) = 8
    q_type: Choice("symmetric", "asymmetric") = "symmetric"
    q_groups: Int(ge=1) = 1
    quantized_initialization: FreeDict = FrozenDict()
    post_init_quant: FreeDict = FrozenDict()


_EXPERT_PARALLEL_DEFAULTS: dict[str, Any] = {
    "enabled": False, "autoep_size": 1, "expert_tensor_parallel_size": 1, "validate_folding_routing": False,
    "async_split_plan": False, "preset_model": None, "moe_layer_pattern": None, "expert_pattern": None,
    "router_pattern": None, "use_grouped_mm": True, "disable_triton_grouped_mm": False, "route_norm": None,
    "route_scale": 1.0, "score_apply": "auto", "combine_impl": "auto", "row_weighting_impl": "auto",
    "gate_up_impl": "separate", "comm_backend": "comm", "comm_num_sm": 12, "comm_qp_margin": 4,
    "comm_max_tokens_per_rank": 0, "num_expert_groups": None, "num_limited_groups": None,
    "score_func": "auto", "top_k": "auto", "load_balance_coeff": None, "routed_scaling_factor": "auto",
    "expert_w1": None, "expert_w2": None, "expert_w3": None, "num_experts_attr": None, "top_k_attr": None,
    "has_shared_experts": None, "shared_experts_pattern": None, "shared_experts_gate_pattern": None,
    "expert_activation": None,
}

ExpertParallelConfig = create_model(  # many loosely typed knobs: the key set is what we check
    "ExpertParallelConfig", __base__=ConfigModel,
    **{key: (Any, default) for key, default in _EXPERT_PARALLEL_DEFAULTS.items()},
)
ExpertParallelConfig.section = "expert_parallel"
ExpertParallelConfig.__doc__ = "AutoEP expert parallelism (DeepSpeed module_inject/auto_ep_config.py)."

__all__ = ["AutotuningConfig", "HybridEngineConfig", "CompileConfig", "TensorParallelConfig",
           "WeightQuantizationConfig", "ExpertParallelConfig"]
