"""Hugging Face "auto" values: allowed at parse time, filled by resolved(), named when unresolved."""

import pytest

from zerospeed.config import load_config
from zerospeed.errors import ConfigError

HF = {
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto"},
    "fp16": {"enabled": "auto"}, "gradient_clipping": "auto",
}


def test_defaulted_autos_take_deepspeed_defaults():
    c = load_config(HF)
    assert c.zero_optimization.reduce_bucket_size == 500_000_000
    assert c.zero_optimization.stage3_prefetch_bucket_size == 50_000_000
    assert c.fp16.enabled is False and c.gradient_clipping == 1.0
    assert "zero_optimization.reduce_bucket_size" in c.auto_keys and "fp16.enabled" in c.auto_keys


def test_unresolved_error_names_every_key():
    with pytest.raises(ConfigError) as info:
        load_config(HF).resolved(2)
    message = str(info.value)
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "optimizer.params.lr",
                "optimizer.params.weight_decay"):
        assert key in message, message


def test_resolved_fills_everything():
    values = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "optimizer.params.lr": 3e-4,
              "optimizer.params.weight_decay": 0.01, "zero_optimization.reduce_bucket_size": 4096 ** 2,
              "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * 4096 ** 2), "fp16.enabled": True,
              "gradient_clipping": 0.3, "not.an.auto.key": 1}
    c = load_config(HF).resolved(8, values)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (64, 4, 2)
    assert c.optimizer.params == {"lr": 3e-4, "weight_decay": 0.01}
    assert c.zero_optimization.reduce_bucket_size == 16_777_216
    assert c.zero_optimization.stage3_prefetch_bucket_size == 15_099_494
    assert c.fp16.enabled is True and c.gradient_clipping == 0.3


def test_auto_batch_derived_from_the_others():
    c = load_config({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2,
                     "gradient_accumulation_steps": 4}).resolved(2)
    assert c.train_batch_size == 16


def test_auto_value_is_validated():
    with pytest.raises(ConfigError, match="optimizer.params.lr = 'fast'"):
        load_config(HF).resolved(1, {"optimizer.params.lr": "fast", "train_batch_size": 8})


def test_auto_batch_value_must_be_consistent():
    values = {"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "optimizer.params.lr": 1e-3, "optimizer.params.weight_decay": 0.0}
    with pytest.raises(ConfigError, match="train_batch_size"):
        load_config(HF).resolved(2, values)


def test_genuine_auto_kept():
    c = load_config({"train_batch_size": 8, "pipeline": {"stages": "auto"}, "data_types": {
        "keep_in_fp32_modules": "auto"}})
    assert c.pipeline.stages == "auto" and c.auto_keys == ()


def test_load_config_with_world_size_defers_when_auto():
    c = load_config(HF, world_size=4)
    assert c.train_batch_size == "auto" and c.world_size is None


def test_resolved_again_with_other_world_size_keeps_earlier_values():
    values = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "optimizer.params.lr": 1e-3, "optimizer.params.weight_decay": 0.0}
    first = load_config(HF).resolved(2, values)
    second = first.resolved(4)
    assert (first.train_batch_size, second.train_batch_size) == (8, 16)
    assert second.optimizer.params["lr"] == 1e-3


def test_bfloat16_alias_auto_resolves():
    c = load_config({"train_batch_size": 8, "bfloat16": {"enabled": "auto"}}).resolved(1, {"bf16.enabled": True})
    assert c.bf16.enabled is True


def test_scheduler_auto_must_be_resolved():
    config = {"train_batch_size": 8, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}}
    with pytest.raises(ConfigError, match="scheduler.params.warmup_num_steps"):
        load_config(config).resolved(1)
    assert load_config(config).resolved(1, {"scheduler.params.warmup_num_steps": 50}).scheduler.params == {
        "warmup_num_steps": 50}
