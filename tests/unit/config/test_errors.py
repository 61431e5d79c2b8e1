"""Every invalid kind fails with one ConfigError naming the key path, the value and what is allowed."""

import argparse

import pytest
from pydantic import ValidationError

from zerospeed.config import load_config
from zerospeed.errors import ConfigError


def fails(config, *fragments):
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert not isinstance(info.value, ValidationError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


BASE = {"train_batch_size": 8}


def test_top_level_typo_did_you_mean():
    fails({"train_batch_sise": 8}, "train_batch_sise", "did you mean 'train_batch_size'")


def test_nested_typo_did_you_mean():
    fails({**BASE, "zero_optimization": {"stage": 2, "reduce_bucket_sise": 5e8}},
          "zero_optimization.reduce_bucket_sise", "did you mean 'reduce_bucket_size'")


def test_deeply_nested_typo():
    fails({**BASE, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu", "pin_memmory": True}}},
          "zero_optimization.offload_param.pin_memmory", "did you mean 'pin_memory'")


def test_optimizer_param_typo():
    fails({**BASE, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decy": 0.1}}},
          "optimizer.params.weight_decy", "did you mean 'weight_decay'")


def test_scheduler_param_typo():
    fails({**BASE, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_step": 10}}},
          "scheduler.params.warmup_num_step", "did you mean 'warmup_num_steps'")


def test_stage_out_of_range():
    fails({**BASE, "zero_optimization": {"stage": 4}}, "zero_optimization.stage", "4", "<= 3")


def test_negative_bucket():
    fails({**BASE, "zero_optimization": {"reduce_bucket_size": -1}}, "zero_optimization.reduce_bucket_size",
          "-1", "> 0")


def test_offload_device_gpu():
    fails({**BASE, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "gpu"}}},
          "zero_optimization.offload_optimizer.device", "'gpu'", "'none', 'cpu', 'nvme'")


def test_nvme_needs_path():
    fails({**BASE, "zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}},
          "zero_optimization.offload_param.nvme_path", "required")


def test_fp16_and_bf16_both_enabled():
    fails({**BASE, "fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16.enabled", "bf16.enabled")


def test_unknown_optimizer_type():
    fails({**BASE, "optimizer": {"type": "Adamm"}}, "optimizer.type", "'Adamm'", "did you mean", "adam")


def test_unknown_scheduler_type():
    fails({**BASE, "scheduler": {"type": "WarmupLinear"}}, "scheduler.type", "WarmupLR")


def test_warmup_decay_needs_total_steps():
    fails({**BASE, "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 10}}},
          "scheduler.params.total_num_steps", "required by scheduler type 'WarmupDecayLR'")


def test_lr_fast():
    fails({**BASE, "optimizer": {"type": "Adam", "params": {"lr": "fast"}}}, "optimizer.params.lr", "'fast'",
          "expected a number")


def test_bool_rejected_for_integer():
    fails({**BASE, "zero_optimization": {"reduce_bucket_size": True}}, "zero_optimization.reduce_bucket_size",
          "expected an integer, got a boolean")


def test_bool_rejected_for_batch():
    fails({"train_batch_size": True}, "train_batch_size", "boolean")


def test_bool_rejected_for_float_param():
    fails({**BASE, "optimizer": {"type": "Adam", "params": {"lr": True}}}, "optimizer.params.lr", "boolean")


def test_int_rejected_for_bool():
    fails({**BASE, "fp16": {"enabled": 1}}, "fp16.enabled", "expected true or false")


def test_non_integral_float_for_integer():
    fails({**BASE, "gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps", "non-integral")


def test_numeric_string_for_integer():
    fails({**BASE, "zero_optimization": {"reduce_bucket_size": "5e8"}}, "zero_optimization.reduce_bucket_size",
          "got a string")


@pytest.mark.parametrize("key", ["amp", "elasticity", "curriculum_learning", "compression_training",
                                 "sparse_gradients", "sparse_attention", "progressive_layer_drop"])
def test_removed_top_level_keys(key):
    fails({**BASE, key: {"enabled": True}}, key, "not supported")


@pytest.mark.parametrize("key", ["mics_shard_size", "zeropp_loco_param"])
def test_removed_zero_keys(key):
    fails({**BASE, "zero_optimization": {"stage": 3, key: 8}}, f"zero_optimization.{key}", "not supported")


def test_max_grad_norm_in_optimizer_params():
    fails({**BASE, "optimizer": {"type": "Adam", "params": {"max_grad_norm": 1.0}}},
          "optimizer.params.max_grad_norm", "gradient_clipping")


def test_removed_onebit_optimizer():
    fails({**BASE, "optimizer": {"type": "OneBitAdam"}}, "optimizer.type", "not supported")


def test_warmup_type_invalid():
    fails({**BASE, "scheduler": {"type": "WarmupLR", "params": {"warmup_type": "cosine"}}},
          "scheduler.params.warmup_type", "'log', 'linear'")


def test_betas_wrong_shape():
    fails({**BASE, "optimizer": {"type": "Adam", "params": {"betas": [0.9]}}}, "optimizer.params.betas", "two")


def test_communication_data_type_invalid():
    fails({**BASE, "communication_data_type": "fp8"}, "communication_data_type", "'fp8'", "'bf16'")


def test_allreduce_sum_with_stage3():
    fails({**BASE, "gradient_allreduce_op": "sum", "zero_optimization": {"stage": 3}}, "gradient_allreduce_op",
          "stage 3")


def test_section_not_an_object():
    fails({**BASE, "fp16": True}, "fp16", "expected an object")


def test_several_errors_reported_together():
    message = fails({**BASE, "fp16": {"enabled": 1}, "zero_optimization": {"stage": 7}})
    assert "fp16.enabled" in message and "zero_optimization.stage" in message


def test_invalid_json_text_has_position():
    fails('{\n  "train_batch_size": 8,\n  "fp16": {"enabled": true,,}\n}', "line 3", "column")


def test_json_not_an_object():
    fails("[1, 2, 3]", "must be a JSON object", "line 1")


def test_invalid_json_file_has_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"train_batch_size": 8,\n "fp16": {]}')
    fails(str(path), "bad.json", "line 2", "column")


def test_missing_path():
    fails("/no/such/dir/ds_config.json", "config file not found", "/no/such/dir/ds_config.json")


def test_duplicate_keys_rejected():
    fails('{"train_batch_size": 8, "train_batch_size": 16}', "duplicate key 'train_batch_size'")


def test_args_without_config():
    with pytest.raises(ConfigError, match="deepspeed_config"):
        load_config(argparse.Namespace(deepspeed_config=None))


def test_partial_offload_needs_stage3():
    fails({**BASE, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}},
          "zero_optimization.offload_optimizer.ratio", "stage 3")


def test_curriculum_enabled_needs_metrics():
    fails({**BASE, "data_efficiency": {"data_sampling": {"curriculum_learning": {"enabled": True}}}},
          "curriculum_metrics", "required")
