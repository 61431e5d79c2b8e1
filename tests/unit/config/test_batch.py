"""Batch arithmetic: train_batch_size = micro x accumulation x DP world size, DeepSpeed's completion rules."""

import pytest

from zerospeed.config import load_config
from zerospeed.config.batch import complete_batch
from zerospeed.errors import ConfigError


@pytest.mark.parametrize("given, world, expected", [
    ({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 4, (32, 4, 2)),
    ({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}, 4, (32, 4, 2)),
    ({"train_batch_size": 32, "gradient_accumulation_steps": 2}, 4, (32, 4, 2)),
    ({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}, 4, (32, 4, 2)),
    ({"train_batch_size": 32}, 4, (32, 8, 1)),
    ({"train_micro_batch_size_per_gpu": 4}, 4, (16, 4, 1)),
    ({"train_batch_size": 8}, 1, (8, 8, 1)),
    ({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 16}, 1, (32, 2, 16)),
    ({"train_batch_size": 5e2, "train_micro_batch_size_per_gpu": 5.0}, 10, (500, 5, 10)),
])
def test_batch_table(given, world, expected):
    c = load_config(given, world_size=world)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == expected
    assert all(type(v) is int for v in expected)


def test_inconsistent_names_three_numbers_and_equation():
    config = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    with pytest.raises(ConfigError) as info:
        load_config(config, world_size=2)
    message = str(info.value)
    assert "train_batch_size (32)" in message and "train_micro_batch_size_per_gpu (4)" in message
    assert "gradient_accumulation_steps (2)" in message and "world size (2)" in message and "= 16" in message


def test_inconsistent_detected_without_world_size():
    with pytest.raises(ConfigError, match="not a multiple of 12"):
        load_config({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 3})


def test_derived_does_not_divide():
    with pytest.raises(ConfigError, match="inconsistent batch sizes"):
        load_config({"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4}, world_size=2)


def test_derived_zero_accumulation():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps = 0"):
        load_config({"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4}, world_size=2)


def test_no_batch_size_at_all():
    with pytest.raises(ConfigError, match="batch size missing"):
        load_config({"gradient_accumulation_steps": 2}, world_size=2)


def test_zero_batch_rejected_at_parse():
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu"):
        load_config({"train_micro_batch_size_per_gpu": 0})


def test_complete_batch_function():
    assert complete_batch(None, 2, 3, 4) == (24, 2, 3)


def test_parse_without_world_size_keeps_given_values():
    c = load_config({"train_micro_batch_size_per_gpu": 4})
    assert c.train_batch_size is None and c.gradient_accumulation_steps is None and c.world_size is None
    r = c.resolved(3)
    assert (r.train_batch_size, r.gradient_accumulation_steps, r.world_size) == (12, 1, 3)
