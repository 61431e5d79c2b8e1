"""Sources, immutability, to_dict and the DeepSpeedConfig compatibility view."""

import argparse
import base64
import json

import pytest
from pydantic import ValidationError

from zerospeed.config import DeepSpeedConfig, ZeroSpeedConfig, load_config
from zerospeed.errors import ConfigError

CONFIG = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2,
          "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "betas": [0.9, 0.99]}},
          "zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8}, "bf16": {"enabled": True}}


def test_5e8_becomes_int():
    c = load_config('{"train_batch_size": 8, "zero_optimization": {"reduce_bucket_size": 5e8}}')
    assert c.zero_optimization.reduce_bucket_size == 500_000_000
    assert type(c.zero_optimization.reduce_bucket_size) is int


def test_frozen_nested_assignment_raises():
    c = load_config(CONFIG)
    with pytest.raises(ValidationError):
        c.zero_optimization.stage = 3
    with pytest.raises(ValidationError):
        c.train_batch_size = 1


def test_params_dict_is_read_only():
    c = load_config(CONFIG)
    with pytest.raises(TypeError):
        c.optimizer.params["lr"] = 1.0
    assert c.optimizer.params["betas"] == (0.9, 0.99)


def test_to_dict_is_json_and_round_trips():
    c = load_config(CONFIG, world_size=4)
    data = c.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["gradient_accumulation_steps"] == 2 and data["zero_optimization"]["reduce_bucket_size"] == 500000000
    assert load_config(data).to_dict() == data


def test_sources_are_equivalent(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(CONFIG))
    encoded = base64.urlsafe_b64encode(json.dumps(CONFIG).encode()).decode()
    expected = load_config(CONFIG).to_dict()
    for source in (str(path), path, json.dumps(CONFIG), argparse.Namespace(deepspeed_config=str(path)), encoded):
        assert load_config(source).to_dict() == expected


def test_hjson_text():
    c = load_config("{\n  // comment\n  train_batch_size: 4\n  fp16: {enabled: true}\n}")
    assert c.train_batch_size == 4 and c.fp16.enabled


def test_config_instance_passes_through():
    c = load_config(CONFIG)
    assert load_config(c) is c
    assert load_config(c, world_size=8).gradient_accumulation_steps == 1


def test_input_dict_not_mutated():
    config = {"train_batch_size": 8, "zero_optimization": {"stage": 2, "cpu_offload": True}}
    load_config(config)
    assert config == {"train_batch_size": 8, "zero_optimization": {"stage": 2, "cpu_offload": True}}


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_deepspeed_config_compat():
    ds = DeepSpeedConfig(CONFIG, world_size=4)
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (16, 2, 2)
    assert ds.zero_optimization_stage == 2 and ds.zero_enabled and ds.bf16_enabled and not ds.fp16_enabled
    assert ds.optimizer_name == "adam" and ds.gradient_clipping == 1.0
    assert ds.steps_per_print is None  # falls through to the config
    assert isinstance(ds.config, ZeroSpeedConfig)


def test_deepspeed_config_with_mpu():
    class Mpu:
        def get_data_parallel_world_size(self):
            return 8

    assert DeepSpeedConfig({"train_batch_size": 16}, mpu=Mpu()).train_micro_batch_size_per_gpu == 2


def test_import_as_deepspeed_names():
    import zerospeed.config as config_module

    assert {"load_config", "ZeroSpeedConfig", "DeepSpeedConfig"} <= set(config_module.__all__)
