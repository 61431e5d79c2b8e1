"""DeepSpeed's import paths resolve to zerospeed's own objects, by import and by attribute access.

`PATHS` lists each DeepSpeed path (relative to the package) and the zerospeed object it must
be. Import access (`import zerospeed.runtime.zero.partition_parameters`) is checked in this
process; attribute access (`zerospeed.runtime.zero.partition_parameters.ZeroParamStatus`
after a bare `import zerospeed`) is checked in a fresh interpreter, where nothing has been
imported yet to make a lazy attribute appear by accident.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

# DeepSpeed path (without the package name) -> "module:attribute" of zerospeed's implementation
PATHS = {
    "runtime.zero.partition_parameters.ZeroParamStatus": "zerospeed.zero.stage3.params:ZeroParamStatus",
    "runtime.zero.partition_parameters.Init": "zerospeed.zero.init:Init",
    "runtime.zero.partition_parameters.GatheredParameters": "zerospeed.zero.init:GatheredParameters",
    "runtime.zero.partition_parameters.register_external_parameter": "zerospeed.zero.init:register_external_parameter",
    "runtime.zero.ZeroParamStatus": "zerospeed.zero.stage3.params:ZeroParamStatus",
    "runtime.zero.Init": "zerospeed.zero.init:Init",
    "runtime.utils.see_memory_usage": "zerospeed.runtime.utils:see_memory_usage",
    "runtime.utils.clip_grad_norm_": "zerospeed.runtime.utils:clip_grad_norm_",
    "utils.safe_get_local_fp32_param": "zerospeed.utils.tensor_fragment:safe_get_local_fp32_param",
    "utils.safe_get_local_grad": "zerospeed.utils.tensor_fragment:safe_get_local_grad",
    "utils.safe_get_local_optimizer_state": "zerospeed.utils.tensor_fragment:safe_get_local_optimizer_state",
    "utils.safe_set_local_fp32_param": "zerospeed.utils.tensor_fragment:safe_set_local_fp32_param",
    "utils.safe_set_local_grad": "zerospeed.utils.tensor_fragment:safe_set_local_grad",
    "utils.safe_set_local_optimizer_state": "zerospeed.utils.tensor_fragment:safe_set_local_optimizer_state",
    "utils.safe_get_full_fp32_param": "zerospeed.utils.tensor_fragment:safe_get_full_fp32_param",
    "utils.RepeatingLoader": "zerospeed.runtime.data:RepeatingLoader",
    "utils.groups._get_data_parallel_group": "zerospeed.utils.groups:_get_data_parallel_group",
    "utils.groups._get_data_parallel_world_size": "zerospeed.utils.groups:_get_data_parallel_world_size",
    "utils.groups._get_data_parallel_rank": "zerospeed.utils.groups:_get_data_parallel_rank",
    "utils.groups.get_data_parallel_group": "zerospeed.utils.groups:get_data_parallel_group",
    "utils.groups._get_model_parallel_world_size": "zerospeed.utils.groups:_get_model_parallel_world_size",
    "utils.groups._get_sequence_parallel_world_size": "zerospeed.utils.groups:_get_sequence_parallel_world_size",
    "runtime.zero.offload_config.OffloadDeviceEnum": "zerospeed.runtime.zero.offload_config:OffloadDeviceEnum",
    "runtime.zero.offload_config.DeepSpeedZeroOffloadParamConfig": "zerospeed.config.offload:OffloadParamConfig",
    "runtime.zero.config.DeepSpeedZeroConfig": "zerospeed.config.zero:ZeroConfig",
    "runtime.zero.config.ZeroStageEnum": "zerospeed.runtime.zero.config:ZeroStageEnum",
    "runtime.config.DeepSpeedConfig": "zerospeed.config.compat:DeepSpeedConfig",
    "DeepSpeedConfig": "zerospeed.config.compat:DeepSpeedConfig",
    "runtime.fp16.loss_scaler.LossScaler": "zerospeed.runtime.fp16.loss_scaler:LossScaler",
    "runtime.fp16.loss_scaler.DynamicLossScaler": "zerospeed.runtime.fp16.loss_scaler:DynamicLossScaler",
    "runtime.fp16.loss_scaler.LossScalerBase": "zerospeed.runtime.precision:LossScaler",
    "runtime.activation_checkpointing.checkpointing": "zerospeed:checkpointing",
    "runtime.activation_checkpointing.checkpointing.checkpoint": "zerospeed.checkpointing:checkpoint",
    "runtime.dataloader.DeepSpeedDataLoader": "zerospeed.runtime.dataloader:DeepSpeedDataLoader",
    "runtime.dataloader.RepeatingLoader": "zerospeed.runtime.data:RepeatingLoader",
    "DeepSpeedDataLoader": "zerospeed.runtime.dataloader:DeepSpeedDataLoader",
    "runtime.pipe.module.PipelineModule": "zerospeed.pipe.module:PipelineModule",
    "runtime.pipe.module.LayerSpec": "zerospeed.pipe.module:LayerSpec",
    "runtime.pipe.module.TiedLayerSpec": "zerospeed.pipe.module:TiedLayerSpec",
    "runtime.pipe.engine.PipelineEngine": "zerospeed.pipe.engine:PipelineEngine",
    "runtime.pipe.topology.ProcessTopology": "zerospeed.pipe.topology:ProcessTopology",
    "runtime.pipe.topology.PipeDataParallelTopology": "zerospeed.pipe.topology:PipeDataParallelTopology",
    "runtime.pipe.topology.PipeModelDataParallelTopology": "zerospeed.pipe.topology:PipeModelDataParallelTopology",
    "runtime.pipe.topology.PipelineParallelGrid": "zerospeed.pipe.topology:PipelineParallelGrid",
    "runtime.pipe.schedule.TrainSchedule": "zerospeed.pipe.schedule:TrainSchedule",
    "runtime.pipe.PipelineModule": "zerospeed.pipe.module:PipelineModule",
    "PipelineEngine": "zerospeed.pipe.engine:PipelineEngine",
    "PipelineModule": "zerospeed.pipe.module:PipelineModule",
    "runtime.bf16_optimizer.BF16_Optimizer": "zerospeed.runtime.bf16_optimizer:BF16_Optimizer",
    "runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer": "zerospeed.runtime.zero.stage_1_and_2:DeepSpeedZeroOptimizer",
    "runtime.zero.stage3.DeepSpeedZeroOptimizer_Stage3": "zerospeed.zero.stage3.optimizer:Stage3Optimizer",
    "runtime.engine.DeepSpeedEngine": "zerospeed.runtime.engine:Engine",
    "DeepSpeedEngine": "zerospeed.runtime.engine:Engine",
    "launcher.runner.main": "zerospeed.launcher.runner:main",
    "is_compile_supported": "zerospeed.runtime.compiler:is_compile_supported",
    "runtime.compiler.is_compile_supported": "zerospeed.runtime.compiler:is_compile_supported",
    "git_version_info.version": "zerospeed.version:__version__",
    "checkpoint.constants.OPTIMIZER_STATE_DICT": "zerospeed.checkpoint.constants:OPTIMIZER_STATE_DICT",
    "checkpoint.utils.clone_tensors_for_torch_save": "zerospeed.checkpoint.utils:clone_tensors_for_torch_save",
    "runtime.activation_checkpointing.checkpointing.CheckpointFunction": "zerospeed.checkpointing:CheckpointFunction",
    "OnDevice": "zerospeed.utils.init_on_device:OnDevice",
    "utils.OnDevice": "zerospeed.utils.init_on_device:OnDevice",
    "utils.init_on_device.OnDevice": "zerospeed.utils.init_on_device:OnDevice",
    "utils.recursive_getattr": "zerospeed.utils.module_utils:recursive_getattr",
    "utils.module_utils.recursive_setattr": "zerospeed.utils.module_utils:recursive_setattr",
    "compression.helper.recursive_getattr": "zerospeed.utils.module_utils:recursive_getattr",
    "compression.helper.recursive_setattr": "zerospeed.utils.module_utils:recursive_setattr",
    "utils.timer.SynchronizedWallClockTimer": "zerospeed.utils.timer:SynchronizedWallClockTimer",
    "utils.timer.ThroughputTimer": "zerospeed.utils.timer:ThroughputTimer",
    "utils.timer.FORWARD_MICRO_TIMER": "zerospeed.utils.timer:FORWARD_MICRO_TIMER",
    "runtime.pipe.engine.TRAIN_BATCH_TIMER": "zerospeed.pipe.engine:TRAIN_BATCH_TIMER",
    "runtime.pipe.engine.PIPE_RECV_GRAD_TIMER": "zerospeed.pipe.engine:PIPE_RECV_GRAD_TIMER",
    "log_dist": "zerospeed.utils.logging:log_dist",
    "DeepSpeedConfigError": "zerospeed.errors:ConfigError",
}

# paths that are modules themselves (and must import under the zerospeed name)
MODULE_PATHS = [
    "runtime.zero.partition_parameters", "runtime.zero.config", "runtime.zero.offload_config", "runtime.config",
    "runtime.utils", "runtime.fp16.loss_scaler", "runtime.activation_checkpointing.checkpointing",
    "runtime.dataloader", "runtime.pipe", "runtime.pipe.module", "runtime.pipe.engine", "runtime.pipe.topology",
    "runtime.bf16_optimizer", "runtime.engine", "launcher.runner", "git_version_info", "checkpoint.constants",
    "checkpoint.utils", "utils.groups", "utils.timer", "utils.init_on_device", "utils.module_utils", "compression",
    "compression.helper",
]


def _implementation(target: str):
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def _split(path: str) -> tuple[str, str]:
    """("zerospeed.<module path>", attribute) for an import of the path."""
    for cut in range(path.count(".") + 1, -1, -1):
        module_path = ".".join(["zerospeed", *path.split(".")[:cut]])
        try:
            importlib.import_module(module_path)
        except ImportError:
            continue
        rest = path.split(".")[cut:]
        return module_path, ".".join(rest)
    raise AssertionError(f"no importable module on the way to {path}")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_import_path_resolves_to_the_implementation(path):
    module_name, attribute = _split(path)
    value = importlib.import_module(module_name)
    for part in attribute.split(".") if attribute else []:
        value = getattr(value, part)
    assert value is _implementation(PATHS[path])


@pytest.mark.parametrize("path", MODULE_PATHS)
def test_module_paths_import(path):
    module = importlib.import_module(f"zerospeed.{path}")
    assert sys.modules[f"zerospeed.{path}"] is module


_WALK = r"""
import importlib, json, sys
import zerospeed
paths = json.loads(sys.argv[1])
found = {}
for path, target in paths.items():
    value = zerospeed
    try:
        for part in path.split("."):
            value = getattr(value, part)
        module_name, attribute = target.split(":")
        found[path] = value is getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # report, do not stop: every path gets a verdict
        found[path] = f"{type(error).__name__}: {error}"
print(json.dumps(found))
"""


def test_attribute_paths_from_a_fresh_interpreter():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", _WALK, json.dumps(PATHS)], capture_output=True, text=True,
                          timeout=120, env=env, check=True)
    verdicts = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {path: verdict for path, verdict in verdicts.items() if verdict is not True}
    assert not wrong, wrong


def test_activation_checkpointing_alias_is_one_module():
    import zerospeed.checkpointing
    from zerospeed.runtime.activation_checkpointing import checkpointing

    assert checkpointing is zerospeed.checkpointing
    assert sys.modules["zerospeed.runtime.activation_checkpointing.checkpointing"] is zerospeed.checkpointing


def test_version_info():
    import zerospeed
    from zerospeed import git_version_info

    assert git_version_info.version == zerospeed.__version__
    assert isinstance(git_version_info.git_hash, str) and git_version_info.git_hash
    assert isinstance(git_version_info.git_branch, str) and git_version_info.git_branch
    assert zerospeed.__git_hash__ == git_version_info.git_hash
    assert zerospeed.__git_branch__ == git_version_info.git_branch
    assert git_version_info.torch_info["version"]


def test_git_info_outside_a_checkout_is_a_placeholder(tmp_path):
    from zerospeed.git_version_info import UNKNOWN, read_git_info

    package = tmp_path / "site-packages" / "zerospeed"
    package.mkdir(parents=True)
    assert read_git_info(str(package)) == (UNKNOWN, UNKNOWN)


def test_git_info_reads_branch_and_packed_hash(tmp_path):
    from zerospeed.git_version_info import read_git_info

    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/feature/x\n")
    (git / "packed-refs").write_text("# pack-refs\n" + "a" * 40 + " refs/heads/feature/x\n")
    package = tmp_path / "repo" / "src" / "zerospeed"
    package.mkdir(parents=True)
    assert read_git_info(str(package)) == ("a" * 40, "feature/x")


def test_enums_compare_like_deepspeeds():
    from zerospeed.runtime.zero.config import ZeroStageEnum
    from zerospeed.runtime.zero.offload_config import OffloadDeviceEnum

    assert ZeroStageEnum.weights == 3 and ZeroStageEnum.max_stage is ZeroStageEnum.weights
    assert OffloadDeviceEnum.cpu == "cpu" and OffloadDeviceEnum("nvme") is OffloadDeviceEnum.nvme


def test_loss_scalers_take_deepspeeds_arguments():
    from zerospeed.runtime.fp16.loss_scaler import CreateLossScaler, DynamicLossScaler, LossScaler, LossScalerBase
    from zerospeed.runtime.precision import LossScaler as OurScaler

    static = LossScaler(scale=128)
    assert isinstance(static, LossScalerBase) and static.loss_scale == 128 and not static.dynamic
    dynamic = DynamicLossScaler(init_scale=2**8, scale_window=2, min_scale=1, delayed_shift=1, consecutive_hysteresis=False)
    reference = OurScaler(cur_scale=2.0**8, dynamic=True, scale_window=2, min_scale=1.0, delayed_shift=1)
    for overflow in (True, False, False, False, True, False):
        dynamic.update_scale(overflow)
        reference.update_scale(overflow)
        assert dynamic.cur_scale == reference.cur_scale
    made = CreateLossScaler(torch.half, 0, True, {"init_scale": 4, "scale_window": 10, "min_scale": 1,
                                                    "delayed_shift": 2, "consecutive_hysteresis": False})
    assert isinstance(made, DynamicLossScaler) and made.cur_scale == 4
    assert CreateLossScaler(torch.bfloat16, 64, False, None).cur_scale == 1.0

