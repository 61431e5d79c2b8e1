"""Aliases and deprecated keys: the value lands in the documented field, with a warning when deprecated."""

import pytest

from zerospeed.config import load_config
from zerospeed.errors import ConfigError

BASE = {"train_batch_size": 8}


def zero(**keys):
    return load_config({**BASE, "zero_optimization": keys}).zero_optimization


def test_cpu_offload_moves_to_offload_optimizer(warnings_seen):
    z = zero(stage=2, cpu_offload=True)
    assert z.offload_optimizer.device == "cpu" and z.offload_optimizer_device == "cpu"
    assert any("cpu_offload" in w and "offload_optimizer" in w for w in warnings_seen)


def test_cpu_offload_false_means_no_offload(warnings_seen):
    assert zero(stage=2, cpu_offload=False).offload_optimizer is None
    assert warnings_seen


def test_cpu_offload_param(warnings_seen):
    z = zero(stage=3, cpu_offload_param=True)
    assert z.offload_param.device == "cpu" and z.offload_param.pin_memory is True
    assert any("cpu_offload_param" in w for w in warnings_seen)


def test_cpu_offload_and_offload_optimizer_together_rejected():
    with pytest.raises(ConfigError, match="cpu_offload"):
        zero(stage=2, cpu_offload=True, offload_optimizer={"device": "nvme", "nvme_path": "/x"})


def test_short_stage3_names_are_aliases():
    z = zero(stage=3, prefetch_bucket_size=1e6, param_persistence_threshold=10, max_live_parameters=7)
    assert z.stage3_prefetch_bucket_size == 1_000_000 and z.prefetch_bucket_size == 1_000_000
    assert z.stage3_param_persistence_threshold == 10 and z.stage3_max_live_parameters == 7


def test_alias_and_canonical_conflict():
    with pytest.raises(ConfigError, match="conflicts with 'stage3_prefetch_bucket_size'"):
        zero(stage=3, prefetch_bucket_size=1, stage3_prefetch_bucket_size=2)


def test_gather_fp16_weights_renamed(warnings_seen):
    z = zero(stage=3, stage3_gather_fp16_weights_on_model_save=True)
    assert z.stage3_gather_16bit_weights_on_model_save is True and z.gather_16bit_weights_on_model_save
    assert any("stage3_gather_16bit_weights_on_model_save" in w for w in warnings_seen)


def test_bfloat16_alias(warnings_seen):
    c = load_config({**BASE, "bfloat16": {"enabled": True}})
    assert c.bf16.enabled is True
    assert any("bfloat16" in w for w in warnings_seen)


def test_bf16_check_overflow_alias():
    c = load_config({**BASE, "bf16": {"enabled": True, "check_overflow": False}})
    assert c.bf16.check_grad_overflow is False


def test_aio_thread_count_alias():
    assert load_config({**BASE, "aio": {"thread_count": 4}}).aio.intra_op_parallelism == 4


@pytest.mark.parametrize("spelling", ["Adam", "adam", "ADAM"])
def test_optimizer_type_case_insensitive(spelling):
    assert load_config({**BASE, "optimizer": {"type": spelling}}).optimizer.type == "adam"


@pytest.mark.parametrize("spelling, canonical", [("sgd", "SGD"), ("RmsProp", "RMSprop"), ("AdamW", "adamw"),
                                                 ("OneCycle", "OneCycle")])
def test_type_canonical_spelling(spelling, canonical):
    section = "scheduler" if spelling == "OneCycle" else "optimizer"
    params = {"cycle_min_lr": 0.1, "cycle_max_lr": 1.0} if section == "scheduler" else {}
    c = load_config({**BASE, section: {"type": spelling, "params": params}})
    assert getattr(c, section).type == canonical


def test_torch_optimizer_params_from_signature():
    c = load_config({**BASE, "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9, "nesterov": True}}})
    assert c.optimizer.params == {"lr": 0.1, "momentum": 0.9, "nesterov": True}
    with pytest.raises(ConfigError, match="optimizer.params.betas"):
        load_config({**BASE, "optimizer": {"type": "SGD", "params": {"betas": [0.9, 0.99]}}})


def test_torch_scheduler_required_param():
    with pytest.raises(ConfigError, match="scheduler.params.step_size"):
        load_config({**BASE, "scheduler": {"type": "StepLR", "params": {"gamma": 0.5}}})


def test_deepspeed_adam_extras_accepted():
    params = {"lr": 1e-3, "torch_adam": True, "adam_w_mode": False, "fp32_optimizer_states": True}
    assert load_config({**BASE, "optimizer": {"type": "Adam", "params": params}}).optimizer.params == params


def test_all_scheduler_types_accept_their_params():
    cases = {
        "WarmupLR": {"warmup_min_lr": 0, "warmup_max_lr": 1e-3, "warmup_num_steps": 100, "warmup_type": "linear"},
        "WarmupDecayLR": {"total_num_steps": 1000, "warmup_max_lr": 1e-3, "warmup_num_steps": 100},
        "WarmupCosineLR": {"total_num_steps": 1000, "warmup_min_ratio": 0.0, "cos_min_ratio": 0.1,
                           "warmup_num_steps": 10, "warmup_type": "log"},
        "OneCycle": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "decay_lr_rate": 0.1, "cycle_first_step_size": 100,
                     "cycle_momentum": True, "cycle_min_mom": 0.85, "cycle_max_mom": 0.99},
        "LRRangeTest": {"lr_range_test_min_lr": 1e-5, "lr_range_test_step_size": 10,
                        "lr_range_test_step_rate": 2.0, "lr_range_test_staircase": True},
    }
    for kind, params in cases.items():
        assert load_config({**BASE, "scheduler": {"type": kind, "params": params}}).scheduler.params == params


def test_dtype_spellings_normalised():
    c = load_config({**BASE, "data_types": {"grad_accum_dtype": "float32"}, "communication_data_type": "BF16",
                     "torch_autocast": {"enabled": True, "dtype": "torch.bfloat16"}})
    assert c.data_types.grad_accum_dtype == "fp32" and c.communication_data_type == "bf16"
    assert c.torch_autocast.dtype == "bf16"


def test_checkpoint_modes_upper_cased():
    c = load_config({**BASE, "checkpoint": {"tag_validation": "ignore", "writer": {"type": "python"}}})
    assert c.checkpoint.tag_validation == "IGNORE" and not c.checkpoint.tag_validation_enabled
    assert c.checkpoint.writer.type == "PYTHON"


def test_flops_profiler_turns_on_wall_clock_breakdown():
    assert load_config({**BASE, "flops_profiler": {"enabled": True}}).wall_clock_breakdown is True


def test_unbuilt_section_warns_once_per_section(warnings_seen):
    c = load_config({**BASE, "autotuning": {"enabled": True, "start_step": 2}, "compile": {"deepcompile": True}})
    assert c.autotuning.start_profile_step == 2 and c.compile.deepcompile is True
    assert any("'autotuning'" in w for w in warnings_seen) and any("'compile'" in w for w in warnings_seen)


def test_offload_param_below_stage3_warns(warnings_seen):
    z = zero(stage=2, offload_param={"device": "cpu"})
    assert z.offload_param.device == "cpu"
    assert any("offload_param" in w for w in warnings_seen)
