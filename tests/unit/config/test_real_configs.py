"""Real DeepSpeed configs (docs, tutorials, HF, Megatron, DeepSpeedExamples) load with DeepSpeed's values.

Expected numbers were read from DeepSpeed 0.19.8's config classes (defaults) and are
hard-coded so the tests never import deepspeed.
"""

import json
import sys

import pytest

from zerospeed.config import load_config

FIXTURES = ["hf_ds_config_zero2.json", "hf_ds_config_zero3.json", "zero_offload_tutorial.json",
            "zero3_tutorial.json", "config_json_doc_example.json", "megatron_deepspeed.json",
            "bing_bert_lamb.json", "cifar10_ds_config.hjson", "nvme_infinity.json"]

HF_AUTO_VALUES = {
    "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
    "optimizer.params.lr": 5e-5, "optimizer.params.betas": [0.9, 0.999], "optimizer.params.eps": 1e-8,
    "optimizer.params.weight_decay": 0.0, "scheduler.params.warmup_min_lr": 0,
    "scheduler.params.warmup_max_lr": 5e-5, "scheduler.params.warmup_num_steps": 500,
    "gradient_clipping": 0.5, "bf16.enabled": True,
}


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_loads_and_is_json_serialisable(data_dir, name):
    config = load_config(data_dir / name)
    json.dumps(config.to_dict())


def test_defaults_match_deepspeed():
    c = load_config({"train_batch_size": 8})
    assert c.gradient_clipping == 1.0
    assert c.steps_per_print is None and c.prescale_gradients is False
    assert c.gradient_predivide_factor == 1.0 and c.communication_data_type is None
    assert c.seq_parallel_communication_data_type == "fp32"
    assert c.zero_force_ds_cpu_optimizer is True and c.zero_allow_untested_optimizer is False
    z = c.zero_optimization
    assert (z.stage, z.overlap_comm, z.contiguous_gradients, z.reduce_scatter) == (0, False, True, True)
    assert z.reduce_bucket_size == 500_000_000 and z.allgather_bucket_size == 500_000_000
    assert z.stage3_prefetch_bucket_size == 50_000_000 and z.stage3_param_persistence_threshold == 100_000
    assert z.stage3_max_live_parameters == 1_000_000_000 and z.stage3_max_reuse_distance == 1_000_000_000
    assert z.stage3_model_persistence_threshold == sys.maxsize and z.sub_group_size == 1_000_000_000
    assert z.offload_optimizer is None and z.offload_param is None and z.round_robin_gradients is False
    f = c.fp16
    assert (f.enabled, f.loss_scale, f.initial_scale_power, f.loss_scale_window, f.hysteresis,
            f.consecutive_hysteresis, f.min_loss_scale, f.auto_cast) == (False, 0.0, 16, 1000, 2, False, 1, False)
    assert c.bf16.enabled is False and c.bf16.check_grad_overflow is True
    assert c.bf16.immediate_grad_update is False
    assert (c.aio.block_size, c.aio.queue_depth, c.aio.intra_op_parallelism) == (1048576, 8, 1)
    assert c.aio.overlap_events is True and c.aio.single_submit is False
    assert c.checkpoint.tag_validation == "WARN" and c.checkpoint.load_universal is False
    assert c.flops_profiler.top_modules == 1 and c.flops_profiler.module_depth == -1
    assert c.tensorboard.job_name == "DeepSpeedJobName" and c.wandb.project == "deepspeed"
    assert c.comms_logger.prof_all is True and c.comms_logger.enabled is False
    assert c.pipeline.stages == "auto" and c.pipeline.partition == "best"
    assert c.activation_checkpointing.number_checkpoints is None
    assert c.data_types.grad_accum_dtype is None and c.data_types.keep_in_fp32_modules == "auto"
    assert c.optimizer is None and c.scheduler is None and c.dataloader_drop_last is False


def test_offload_defaults():
    z = load_config({"train_batch_size": 1, "zero_optimization": {
        "stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}}}).zero_optimization
    p, o = z.offload_param, z.offload_optimizer
    assert (p.buffer_count, p.buffer_size, p.max_in_cpu, p.pin_memory) == (5, 100_000_000, 1_000_000_000, True)
    assert (o.buffer_count, o.ratio, o.pin_memory, o.fast_init, o.pipeline) == (4, 1.0, True, False, False)
    assert z.overlap_comm is True  # DeepSpeed's dynamic default at stage 3


def test_hf_zero3_parse_time_values(data_dir):
    c = load_config(data_dir / "hf_ds_config_zero3.json")
    z = c.zero_optimization
    assert z.stage == 3 and z.reduce_bucket_size == 500_000_000  # "auto" -> DeepSpeed default
    assert z.stage3_prefetch_bucket_size == 50_000_000 and z.stage3_param_persistence_threshold == 100_000
    assert z.stage3_max_live_parameters == 1_000_000_000 and isinstance(z.stage3_max_live_parameters, int)
    assert z.sub_group_size == 1_000_000_000 and z.stage3_gather_16bit_weights_on_model_save is True
    assert z.offload_param.device == "cpu" and z.offload_optimizer.device == "cpu"
    assert c.fp16.enabled is False and c.bf16.enabled is False and c.gradient_clipping == 1.0
    assert c.train_batch_size == "auto" and c.optimizer.params["lr"] == "auto"
    assert set(c.unresolved_keys()) >= {"train_batch_size", "optimizer.params.lr", "scheduler.params.warmup_num_steps"}


def test_hf_zero3_resolved(data_dir):
    c = load_config(data_dir / "hf_ds_config_zero3.json").resolved(4, HF_AUTO_VALUES)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (64, 8, 2)
    assert c.optimizer.type == "adamw" and c.optimizer.params["lr"] == 5e-5
    assert c.optimizer.params["betas"] == (0.9, 0.999)
    assert c.scheduler.params["warmup_num_steps"] == 500 and c.gradient_clipping == 0.5
    assert c.bf16.enabled is True and c.fp16.enabled is False and c.world_size == 4
    assert c.unresolved_keys() == []


def test_hf_zero2_values(data_dir):
    c = load_config(data_dir / "hf_ds_config_zero2.json")
    z = c.zero_optimization
    assert z.allgather_bucket_size == 200_000_000 and isinstance(z.reduce_bucket_size, int)
    assert z.overlap_comm is True and z.offload_optimizer.device == "cpu" and c.steps_per_print == 2000


def test_megatron(data_dir):
    c = load_config(data_dir / "megatron_deepspeed.json", world_size=8)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (256, 4, 8)
    assert c.fp16.enabled and c.fp16.initial_scale_power == 11 and c.fp16.loss_scale_window == 500
    assert c.zero_optimization.stage == 1 and c.flops_profiler.top_modules == 3
    assert c.activation_checkpointing.number_checkpoints is None


@pytest.mark.parametrize("world, gas", [(64, 1), (16, 4), (1, 64)])
def test_bing_bert(data_dir, world, gas):
    c = load_config(data_dir / "bing_bert_lamb.json", world_size=world)
    assert c.gradient_accumulation_steps == gas and c.optimizer.type == "lamb"
    assert c.optimizer.params["lr"] == pytest.approx(11e-3) and c.optimizer.params["bias_correction"] is False


def test_cifar_hjson(data_dir, warnings_seen):
    c = load_config(data_dir / "cifar10_ds_config.hjson", world_size=1)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (16, 16, 1)
    assert c.optimizer.params["betas"] == (0.8, 0.999) and c.fp16.initial_scale_power == 15
    assert c.zero_optimization.offload_optimizer is None  # cpu_offload: false
    assert any("cpu_offload" in w for w in warnings_seen)


def test_config_json_doc_legacy_zero_bool(data_dir, warnings_seen):
    c = load_config(data_dir / "config_json_doc_example.json")
    assert c.zero_optimization.stage == 1 and c.zero_optimization.allgather_bucket_size == 500_000_000
    assert any("zero_optimization" in w and "deprecated" in w for w in warnings_seen)


def test_nvme_infinity(data_dir, warnings_seen):
    c = load_config(data_dir / "nvme_infinity.json", world_size=2)
    assert c.train_batch_size == 8
    z = c.zero_optimization
    assert z.offload_param.nvme_path == "/local_nvme" and z.offload_param.buffer_size == 100_000_000
    assert z.stage3_gather_16bit_weights_on_model_save is True
    assert c.aio.intra_op_parallelism == 1 and c.aio.queue_depth == 32
    assert c.checkpoint.tag_validation == "FAIL" and c.checkpoint.tag_validation_fail
    assert c.scheduler.params["total_num_steps"] == 10000 and isinstance(c.scheduler.params["total_num_steps"], int)
    assert c.optimizer.params["torch_adam"] is True and c.data_types.grad_accum_dtype == "fp32"
    assert any("stage3_gather_fp16_weights_on_model_save" in w for w in warnings_seen)
    assert any("thread_count" in w for w in warnings_seen)


def test_zero3_tutorial(data_dir):
    c = load_config(data_dir / "zero3_tutorial.json", world_size=4)
    assert c.train_batch_size == 64 and c.zero_optimization.stage3_prefetch_bucket_size == 10_000_000
    assert c.zero_optimization.reduce_bucket_size == 10_000_000 and c.bf16.enabled
