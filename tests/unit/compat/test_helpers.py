"""DeepSpeed's helper functions and engine queries in one process: memory report, clipping,
data loader, launcher entry, groups, and the engine's DeepSpeed surface."""

from __future__ import annotations

import math

import pytest
import torch

import zerospeed
from zerospeed.errors import CommError


def _engine(stage: int = 0, **extra):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": stage},
              "steps_per_print": 1000, **extra}
    engine, *_ = zerospeed.initialize(model=model, config=config)
    return engine


def test_see_memory_usage_prints_only_when_forced(capsys):
    from zerospeed.runtime.utils import see_memory_usage

    see_memory_usage("quiet report")
    assert capsys.readouterr().out == ""
    see_memory_usage("forced report", force=True)
    out = capsys.readouterr().out
    assert "forced report" in out and "MA " in out and "Max_MA" in out


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_matches_torch(norm_type):
    from zerospeed.runtime.utils import clip_grad_norm_

    torch.manual_seed(1)
    ours = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn_like(a) * 3
        b.grad = a.grad.clone()
    norm = clip_grad_norm_(iter(ours), max_norm=0.5, norm_type=norm_type)  # a generator, as callers pass
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm=0.5, norm_type=norm_type)
    torch.testing.assert_close(norm, expected)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)


def test_deepspeed_dataloader_batches_and_timer():
    from zerospeed.runtime.data import build_dataloader
    from zerospeed.runtime.dataloader import DeepSpeedDataLoader

    class Timer:
        starts = 0

        def start(self):
            self.starts += 1

    dataset = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1))
    timer = Timer()
    loader = DeepSpeedDataLoader(dataset, batch_size=3, pin_memory=False, local_rank=0, tput_timer=timer,
                                 data_parallel_world_size=2, data_parallel_rank=1)
    reference = build_dataloader(dataset, 3, 2, 1)
    got = [batch[0] for batch in loader]
    assert len(loader) == len(reference) == len(got) == 2
    for ours, theirs in zip(got, (batch[0] for batch in reference)):
        assert torch.equal(ours, theirs)
    assert timer.starts == len(got) + 1  # DeepSpeed starts the timer on every next(), the last one included


def test_runner_parses_deepspeeds_launcher_flags():
    from zerospeed.launcher import runner

    args = runner.parse_args(["--num_gpus", "2", "--master_port", "29600", "train.py", "--lr", "1e-3"])
    assert (args.num_procs, args.master_port, args.user_script, args.user_args) == (2, 29600, "train.py", ["--lr", "1e-3"])
    assert runner.fetch_hostfile("/no/such/hostfile") is None
    assert runner.parse_resource_filter({"a": 2, "b": 2}, include_str="b:1") == {"b": [1]}


def test_groups_need_the_process_group():
    from zerospeed import comm
    from zerospeed.utils import groups

    if comm.is_initialized():
        pytest.skip("a process group is already up in this process")
    with pytest.raises(CommError, match="init_distributed"):
        groups._get_data_parallel_group()
    assert groups._get_model_parallel_world_size() == 1
    assert groups._get_sequence_parallel_world_size() == 1
    with pytest.raises(KeyError):
        groups._get_sequence_parallel_group()


def test_engine_surface_queries():
    engine = _engine(stage=2, gradient_clipping=0.5)
    assert engine.zero_optimization_partition_gradients() and not engine.zero_optimization_partition_weights()
    assert engine.zero_reduce_bucket_size() == 500_000_000
    assert engine.zero_gather_16bit_weights_on_model_save() is False
    assert engine.zero_offload_optimizer() is None and not engine.zero_cpu_offload()
    assert engine.get_batch_info() == (4, 2, 2)
    assert engine.optimizer_name() == "adamw" and engine.optimizer_params()["lr"] == 1e-3
    assert engine.wall_clock_breakdown() is False and engine.steps_per_print() == 1000
    assert engine.bfloat16_enabled() is False and engine.dynamic_loss_scale() is False
    assert engine.communication_data_type == torch.float32
    assert engine.mp_world_size == 1 and engine.seq_dp_world_size == 1
    assert engine.get_data_parallel_rank() == 0 and engine.get_model_parallel_rank() == 0
    assert engine.data_parallel_group is not None and engine.get_additional_losses() is None
    engine.set_train_micro_batch_size(4)
    assert engine.get_batch_info() == (8, 4, 2)
    with pytest.raises(ValueError, match="ZeRO-3"):
        engine._zero3_consolidated_16bit_state_dict()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_engine_reports_overflow_on_its_optimizer(stage):
    engine = _engine(stage=stage, fp16={"enabled": True, "initial_scale_power": 4, "hysteresis": 1},
                     gradient_accumulation_steps=2)
    assert engine.optimizer.overflow is False  # owned by the optimizer: readable before any step
    x = torch.randn(2, 4)
    engine.backward(engine(x).float().sum() * float("inf"))
    engine.step()  # not a boundary: no step taken, the flag stays as it was
    assert engine.optimizer.overflow is False and engine.optimizer.cur_scale == 16
    engine.backward(engine(x).float().sum())
    engine.step()
    assert engine.optimizer.overflow is True and engine.skipped_steps == 1 and engine.optimizer.cur_scale == 8
    for _ in range(2):
        engine.backward(engine(x).float().sum())
        engine.step()
    assert engine.optimizer.overflow is False and engine.skipped_steps == 1 and engine.global_steps == 2


def test_engine_compile_and_destroy():
    engine = _engine(stage=0, gradient_accumulation_steps=1)
    x = torch.randn(2, 4)
    expected = engine(x).detach()
    engine.compile(backend="eager")
    assert engine.is_compiled
    torch.testing.assert_close(engine(x).detach(), expected)
    with pytest.raises(AttributeError, match="DeepCompile"):
        engine.compile(backend="eager", schedule=[(0, [])])
    engine.destroy()


def test_bf16_optimizer_isinstance():
    from zerospeed.runtime.bf16_optimizer import BF16_Optimizer

    assert isinstance(_engine(stage=0, bf16={"enabled": True}).optimizer, BF16_Optimizer)
    assert not isinstance(_engine(stage=0).optimizer, BF16_Optimizer)
    assert not isinstance(_engine(stage=1, bf16={"enabled": True}).optimizer, BF16_Optimizer)
    with pytest.raises(RuntimeError, match="initialize"):
        BF16_Optimizer()


def test_zero_optimizer_isinstance_truth_table():
    from zerospeed.runtime.bf16_optimizer import BF16_Optimizer
    from zerospeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from zerospeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    from zerospeed.zero.partitioned_optimizer import ZeroOptimizer
    from zerospeed.zero.stage3.optimizer import Stage3Optimizer

    assert issubclass(Stage3Optimizer, ZeroOptimizer)  # why the stage-1/2 name cannot be a plain alias
    classes = (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3, BF16_Optimizer)
    expected = {  # (stage, bf16) -> isinstance against each of `classes`, as DeepSpeed answers
        (0, False): (False, False, False), (0, True): (False, False, True), (1, False): (True, False, False),
        (2, False): (True, False, False), (2, True): (True, False, False), (3, False): (False, True, False),
        (3, True): (False, True, False),
    }
    for (stage, bf16), answers in expected.items():
        optimizer = _engine(stage=stage, bf16={"enabled": bf16}).optimizer
        assert tuple(isinstance(optimizer, cls) for cls in classes) == answers, (stage, bf16)
    assert not isinstance(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), DeepSpeedZeroOptimizer)
    with pytest.raises(RuntimeError, match="initialize"):
        DeepSpeedZeroOptimizer()


def test_engine_sets_the_groups_mpu():
    from zerospeed.utils import groups

    engine = _engine(stage=0)
    assert groups.mpu is None
    assert groups._get_data_parallel_world_size() == 1 and groups._get_data_parallel_rank() == 0
    assert groups._get_data_parallel_group_ranks() == [0]
    assert groups.get_data_parallel_group() is engine.data_parallel_group


def test_local_helpers_are_for_stage3_parameters_only():
    from zerospeed.errors import EngineError
    from zerospeed.utils import safe_get_local_fp32_param, safe_set_local_grad

    engine = _engine(stage=2)
    weight = engine.module[0].weight
    with pytest.raises(EngineError, match="stage 3"):
        safe_get_local_fp32_param(weight)
    with pytest.raises(EngineError, match="safe_get_full"):
        safe_set_local_grad(weight, torch.zeros(weight.numel()))
