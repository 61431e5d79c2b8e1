"""initialize() rejects bad input with ConfigError before any process-group work."""

import argparse

import pytest
import torch

import zerospeed
from zerospeed.errors import ConfigError


def _model():
    return torch.nn.Linear(3, 3)


def _no_process_group():
    return not torch.distributed.is_initialized()


def test_model_is_required():
    with pytest.raises(ConfigError, match="model="):
        zerospeed.initialize(config={"train_batch_size": 2})
    assert _no_process_group()


def test_config_is_required():
    with pytest.raises(ConfigError, match="no config"):
        zerospeed.initialize(model=_model())
    assert _no_process_group()


def test_two_configs_are_refused():
    args = argparse.Namespace(deepspeed_config="ds.json")
    with pytest.raises(ConfigError, match="two configs"):
        zerospeed.initialize(args=args, model=_model(), config={"train_batch_size": 2})
    assert _no_process_group()


def test_bad_config_fails_before_distributed_init():
    with pytest.raises(ConfigError, match="reduce_bucket_sise.*reduce_bucket_size"):
        zerospeed.initialize(model=_model(), config={"train_batch_size": 2, "zero_optimization": {"reduce_bucket_sise": 5}})
    with pytest.raises(ConfigError, match="stage"):
        zerospeed.initialize(model=_model(), config={"train_batch_size": 2, "zero_optimization": {"stage": 4}})
    assert _no_process_group()


def test_non_module_model_is_refused_by_name():
    from zerospeed.runtime.engine import Engine

    with pytest.raises(ConfigError, match="torch.nn.Module, got function"):
        Engine(lambda x: x, config=None)
