"""zero.Init's defaults from a DeepSpeed config: the param dtype and offload_param's device."""

import pytest
import torch

from zerospeed.errors import ConfigError
from zerospeed.zero import Init


def _config(**zero):
    return {"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 3, **zero}}


@pytest.mark.parametrize("offload,expected", [
    (None, None), ({"device": "cpu"}, "cpu"), ({"device": "nvme", "nvme_path": "/tmp"}, "nvme"), ({"device": "none"}, None),
])
def test_remote_device_defaults_to_the_configs_offload_param_device(offload, expected):
    init = Init(config_dict_or_path=_config(**({"offload_param": offload} if offload else {})))
    assert init.remote_device == expected
    assert init.dtype == torch.bfloat16


def test_an_explicit_remote_device_wins_over_the_config():
    init = Init(config_dict_or_path=_config(offload_param={"device": "cpu"}), remote_device="none", dtype=torch.float16)
    assert init.remote_device == "none" and init.dtype == torch.float16


def test_an_unknown_remote_device_names_the_allowed_values():
    with pytest.raises(ConfigError, match=r"remote_device='gpu1'.*'none', 'cpu', 'nvme'"):
        Init(remote_device="gpu1")
