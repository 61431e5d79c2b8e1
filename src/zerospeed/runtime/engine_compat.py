"""The parts of DeepSpeed's engine surface that are queries and utilities, not the training loop.

Scripts and libraries written for DeepSpeed (Hugging Face Trainer and Accelerate, TRL,
Megatron-DeepSpeed, DeepSpeedExamples) call these on the engine: config queries
(`zero_optimization_partition_weights()`, `zero_gather_16bit_weights_on_model_save()`),
batch-size changes, `compile`, `destroy`, `empty_partition_cache`, the rank-0 16-bit
state dict of a ZeRO-3 model. `Engine` inherits them from `EngineCompat` so that
runtime/engine.py keeps only the order of events of a step.

Config queries are a table (DeepSpeed name -> config path), not one method each. Engine
names whose DeepSpeed feature zerospeed does not build raise `NotProvidedError` on access,
so `hasattr(engine, "offload_states")` is False and a call names what is missing.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from typing import Any, Callable

import torch

from zerospeed import comm
from zerospeed.runtime.unsupported import NotProvidedError
from zerospeed.utils.logging import warn_once

# DeepSpeed's engine accessor -> dotted path in the validated config
CONFIG_ACCESSORS: dict[str, str] = {
    "wall_clock_breakdown": "wall_clock_breakdown",
    "memory_breakdown": "memory_breakdown",
    "steps_per_print": "steps_per_print",
    "dump_state": "dump_state",
    "dataloader_drop_last": "dataloader_drop_last",
    "gradient_predivide_factor": "gradient_predivide_factor",
    "managed_gradient_accumulation": "managed_gradient_accumulation",
    "zero_allow_untested_optimizer": "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer": "zero_force_ds_cpu_optimizer",
    "zero_reduce_scatter": "zero_optimization.reduce_scatter",
    "zero_overlap_comm": "zero_optimization.overlap_comm",
    "zero_offload_optimizer": "zero_optimization.offload_optimizer",
    "zero_offload_param": "zero_optimization.offload_param",
    "zero_sub_group_size": "zero_optimization.sub_group_size",
    "zero_reduce_bucket_size": "zero_optimization.reduce_bucket_size",
    "zero_allgather_bucket_size": "zero_optimization.allgather_bucket_size",
    "zero_allgather_partitions": "zero_optimization.allgather_partitions",
    "zero_contiguous_gradients": "zero_optimization.contiguous_gradients",
    "zero_load_from_fp32_weights": "zero_optimization.load_from_fp32_weights",
    "zero_elastic_checkpoint": "zero_optimization.elastic_checkpoint",
    "zero_compute_grad_norm": "zero_optimization.compute_grad_norm",
    "zero_multi_rank_bucket_allreduce": "zero_optimization.use_multi_rank_bucket_allreduce",
    "zero_round_robin_gradients": "zero_optimization.round_robin_gradients",
    "zero_legacy_stage1": "zero_optimization.legacy_stage1",
    "zero_ignore_unused_parameters": "zero_optimization.ignore_unused_parameters",
    "zero_parameter_alignment": "zero_optimization.parameter_alignment",
    "zero_hpz_partition_size": "zero_optimization.zero_hpz_partition_size",
    "zero_quantized_weights": "zero_optimization.zero_quantized_weights",
    "zero_quantized_nontrainable_weights": "zero_optimization.zero_quantized_nontrainable_weights",
    "zero_quantized_gradients": "zero_optimization.zero_quantized_gradients",
    "zero_max_live_parameters": "zero_optimization.stage3_max_live_parameters",
    "zero_max_reuse_distance": "zero_optimization.stage3_max_reuse_distance",
    "zero_prefetch_bucket_size": "zero_optimization.stage3_prefetch_bucket_size",
    "zero_param_persistence_threshold": "zero_optimization.stage3_param_persistence_threshold",
    "zero_model_persistence_threshold": "zero_optimization.stage3_model_persistence_threshold",
    "zero_gather_16bit_weights_on_model_save": "zero_optimization.stage3_gather_16bit_weights_on_model_save",
    "zero_module_granularity_threshold": "zero_optimization.stage3_module_granularity_threshold",
    "zero_allgather_sequential": "zero_optimization.stage3_allgather_sequential",
    "zero_log_trace_cache_warnings": "zero_optimization.log_trace_cache_warnings",
    "fp16_auto_cast": "fp16.auto_cast",
    "fp16_master_weights_and_gradients": "fp16.fp16_master_weights_and_grads",
    "bf16_master_weights_and_gradients": "bf16.bf16_master_weights_and_grads",
    "bf16_optimizer_states": "bf16.bf16_optimizer_states",
    "torch_autocast_enabled": "torch_autocast.enabled",
    "load_universal_checkpoint": "checkpoint.load_universal",
    "use_node_local_storage": "checkpoint.use_node_local_storage",
    "flops_profiler_enabled": "flops_profiler.enabled",
    "flops_profiler_recompute_fwd_factor": "flops_profiler.recompute_fwd_factor",
    "flops_profiler_profile_step": "flops_profiler.profile_step",
    "flops_profiler_module_depth": "flops_profiler.module_depth",
    "flops_profiler_top_modules": "flops_profiler.top_modules",
    "flops_profiler_detailed": "flops_profiler.detailed",
    "flops_profiler_output_file": "flops_profiler.output_file",
    "autotuning_enabled": "autotuning.enabled",
}

# DeepSpeed engine names whose feature zerospeed does not build -> what they are
NOT_PROVIDED: dict[str, str] = {
    "offload_states": "moving model states to the host between steps (engine.offload_states)",
    "reload_states": "moving model states to the host between steps (engine.reload_states)",
    "coalesce_grad_reduction": "deferring gradient reduction over several backward calls "
                               "(engine.coalesce_grad_reduction)",
    "get_pld_theta": "progressive layer drop (engine.get_pld_theta)",
    "random_ltd_initialize": "random-LTD data efficiency (engine.random_ltd_initialize)",
    "set_custom_curriculum_learning_schedule": "curriculum learning (engine.set_custom_curriculum_learning_schedule)",
    "load_moe_state_dict": "Mixture of Experts (engine.load_moe_state_dict)",
    "register_compile_pass": "DeepCompile (engine.register_compile_pass)",
    "get_deepcompile_backend": "DeepCompile (engine.get_deepcompile_backend)",
}

_KNOWN_OPTIMIZERS = {"adam", "adamw", "lamb", "onebitadam", "onebitlamb", "zerooneadam", "adagrad", "lion",
                     "muadam", "muadamw", "musgd", "muon"}


def _config_value(config, path: str) -> Any:
    value = config
    for part in path.split("."):
        value = None if value is None else getattr(value, part)
    return value


def _accessor(name: str, path: str) -> Callable:
    def accessor(self):
        return _config_value(self._config, path)

    accessor.__name__ = name
    accessor.__doc__ = f"DeepSpeed's `engine.{name}()`: the config's `{path}`."
    return accessor


class EngineCompat:
    """Mixed into `Engine`: DeepSpeed's engine queries and utilities around the training loop."""

    # -- ZeRO queries ---------------------------------------------------------------------------
    def zero_optimization_partition_gradients(self) -> bool:
        return self.zero_optimization_stage() >= 2

    def zero_optimization_partition_weights(self) -> bool:
        return self.zero_optimization_stage() >= 3

    def zero_cpu_offload(self) -> bool:
        return self._config.zero_optimization.offload_optimizer_device == "cpu"

    def zero_use_cpu_optimizer(self) -> bool:
        return self._config.zero_optimization.offload_optimizer_device in ("cpu", "nvme")

    def zero_nvme_offload_optimizer(self) -> bool:
        return self._config.zero_optimization.offload_optimizer_device == "nvme"

    def bfloat16_enabled(self) -> bool:
        return self.bf16_enabled()

    def postscale_gradients(self) -> bool:
        return not self._config.prescale_gradients

    # -- precision and optimizer queries ---------------------------------------------------------
    def dynamic_loss_scale(self) -> bool:
        return bool(self.loss_scaler.dynamic)

    def initial_dynamic_scale(self) -> float:
        return float(2 ** self._config.fp16.initial_scale_power)

    def dynamic_loss_scale_args(self) -> dict | None:
        fp16 = self._config.fp16
        if not (fp16.enabled and not fp16.loss_scale):
            return None
        return {"init_scale": 2 ** fp16.initial_scale_power, "scale_window": fp16.loss_scale_window,
                "delayed_shift": fp16.hysteresis, "consecutive_hysteresis": fp16.consecutive_hysteresis,
                "min_scale": fp16.min_loss_scale}

    @property
    def communication_data_type(self) -> torch.dtype:
        return self.policy.comm_dtype

    def optimizer_name(self) -> str | None:
        optimizer = self._config.optimizer
        if optimizer is None:
            return None
        return optimizer.type.lower() if optimizer.type.lower() in _KNOWN_OPTIMIZERS else optimizer.type

    def optimizer_params(self) -> dict | None:
        return dict(self._config.optimizer.params) if self._config.optimizer is not None else None

    def scheduler_name(self) -> str | None:
        return self._config.scheduler.type if self._config.scheduler is not None else None

    def scheduler_params(self) -> dict | None:
        return dict(self._config.scheduler.params) if self._config.scheduler is not None else None

    def is_deepcompile_enabled(self) -> bool:
        return False  # DeepCompile is not built; compile() uses torch.compile

    # -- parallel layout -------------------------------------------------------------------------
    @property
    def data_parallel_group(self):
        """The data-parallel group object (the world group without an mpu), as DeepSpeed's engine has."""
        from zerospeed.utils import groups

        return self.dp_group if self.dp_group is not None else groups._get_data_parallel_group()

    @property
    def mp_world_size(self) -> int:
        return comm.get_world_size(self.model_parallel_group) if self.model_parallel_group is not None else 1

    @property
    def seq_dp_world_size(self) -> int:
        return self.dp_world_size

    def get_data_parallel_rank(self) -> int:
        return self.dp_rank

    def get_model_parallel_rank(self) -> int:
        return comm.get_rank(self.model_parallel_group) if self.model_parallel_group is not None else 0

    get_tensor_parallel_rank = get_model_parallel_rank

    def get_sequence_parallel_group(self):
        return None  # no sequence parallelism: DeepSpeed's engine holds None then too

    def get_additional_losses(self) -> dict | None:
        """Extra named losses a DeepSpeed pipeline aggregates (MoE auxiliary losses); none here."""
        return None

    # -- batch sizes and data ----------------------------------------------------------------------
    def get_batch_info(self) -> tuple[int, int, int]:
        """(train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps)."""
        return self.train_batch_size(), self.train_micro_batch_size_per_gpu(), self.gradient_accumulation_steps()

    def set_train_micro_batch_size(self, micro_batch_size: int) -> None:
        """Change the micro-batch size, keeping the accumulation steps (so the global batch changes)."""
        from zerospeed.errors import ConfigError

        if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
            raise ConfigError(f"set_train_micro_batch_size({micro_batch_size!r}): must be a positive integer")
        self._micro_batch_size = micro_batch_size
        self._train_batch_size = micro_batch_size * self._gradient_accumulation_steps * self.dp_world_size
        self.tput_timer.batch_size = self._train_batch_size

    def set_data_post_process_func(self, post_process_func: Callable | None) -> None:
        """Kept on the training loader; DeepSpeed applies it only under curriculum learning (not built)."""
        if self.training_dataloader is not None:
            self.training_dataloader.post_process_func = post_process_func

    @staticmethod
    def is_map_style_dataset(obj) -> bool:
        return hasattr(obj, "__getitem__") and hasattr(obj, "__len__")

    @staticmethod
    def is_iterable_style_dataset(obj) -> bool:
        return isinstance(obj, torch.utils.data.IterableDataset)

    def deepspeed_io(self, dataset, batch_size: int | None = None, route: int = 0, pin_memory: bool = True,
                     data_sampler=None, collate_fn: Callable | None = None, num_local_io_workers: int | None = None):
        """A per-data-parallel-rank loader of `dataset`, as `initialize(training_data=...)` builds
        (route 0 = training: the throughput timer counts its batches)."""
        from zerospeed.runtime.dataloader import DeepSpeedDataLoader

        return DeepSpeedDataLoader(
            dataset, batch_size or self.train_micro_batch_size_per_gpu(), pin_memory and self.device.type != "cpu",
            self.local_rank, self.tput_timer if route == 0 else None, collate_fn=collate_fn,
            num_local_io_workers=num_local_io_workers, data_sampler=data_sampler,
            data_parallel_world_size=self.dp_world_size, data_parallel_rank=self.dp_rank,
            dataloader_drop_last=self._config.dataloader_drop_last,
        )

    # -- ZeRO-3 model weights ----------------------------------------------------------------------
    def _zero3_consolidated_16bit_state_dict(self, exclude_frozen_parameters: bool = False):
        """The whole model's state dict in the model dtype, on CPU, on rank 0 (None elsewhere).

        Every rank must call it: parameters are gathered one module unit at a time. Tied
        parameters stay one tensor under each name, as in DeepSpeed.
        """
        if not self.zero_optimization_partition_weights():
            raise ValueError("this function requires ZeRO-3 mode")
        from zerospeed.checkpoint.state import raw_state_dict, rank0_module_tensors

        frozen = {n for n, p in self.module.named_parameters() if not p.requires_grad} if exclude_frozen_parameters else set()
        gathered = rank0_module_tensors(self.module, exclude=frozen)
        if gathered is None:
            return None
        tensors, _, ties = gathered
        state = OrderedDict()
        for name, value in raw_state_dict(self.module, keep_vars=True).items():
            if name in tensors:
                state[name] = tensors[name]
            elif name in ties:
                state[name] = tensors[ties[name]]
        return state

    def empty_partition_cache(self) -> None:
        """Release every gathered ZeRO-3 parameter that is not persistent or held (between steps)."""
        coordinator = getattr(self.optimizer, "coordinator", None)
        if coordinator is not None:
            from zerospeed.zero.stage3.params import ZeroParamStatus

            for unit in coordinator.units:
                if not unit.persistent and not unit.holds and unit.status is not ZeroParamStatus.NOT_AVAILABLE:
                    unit.release()
        gc.collect()
        self.accelerator.empty_cache()

    # -- compile and teardown ------------------------------------------------------------------------
    def compile(self, backend: str | None = None, compile_kwargs: dict | None = None, schedule=None,
                compiled_autograd_enabled: bool = False) -> None:
        """torch.compile the wrapped module in place (DeepSpeed's signature; DeepCompile is not built)."""
        from zerospeed.runtime.compiler import is_compile_supported

        if not is_compile_supported():
            raise RuntimeError("compile is not supported in your version of PyTorch.")
        if schedule is not None:
            feature = "DeepCompile (engine.compile(schedule=...))"
            raise NotProvidedError(f"zerospeed does not provide {feature}; call compile() without a schedule "
                                   "to use torch.compile", feature)
        if getattr(self, "_is_compiled", False):
            return
        if compiled_autograd_enabled:
            warn_once("engine.compile(compiled_autograd_enabled=True): compiled autograd is not used by zerospeed; "
                      "the forward is compiled, the backward runs eagerly")
        kwargs = dict(compile_kwargs or {})
        if "backend" in kwargs:
            warn_once("engine.compile(): `backend` in compile_kwargs is overridden by the backend argument")
        kwargs["backend"] = backend or "inductor"  # DeepSpeed's default on CUDA and CPU
        self.module.compile(**kwargs)
        self._is_compiled = True

    @property
    def is_compiled(self) -> bool:
        return getattr(self, "_is_compiled", False)

    def destroy(self) -> None:
        """Finish pending async checkpoint writes and detach ZeRO's hooks from the model.

        As in DeepSpeed, the engine cannot train afterwards; a ZeRO-3 model keeps its
        parameters partitioned (gather them first to keep full weights).
        """
        self.wait_for_checkpoint()
        optimizer = self.optimizer
        for owner in (getattr(optimizer, "coordinator", None), getattr(optimizer, "reducer", None)):
            if owner is not None and hasattr(owner, "remove_hooks"):
                owner.remove_hooks()

    # -- names DeepSpeed has and zerospeed does not build ----------------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # torch.nn.Module: parameters, buffers, submodules
        except AttributeError:
            feature = NOT_PROVIDED.get(name)
            if feature is None:
                raise
            raise NotProvidedError(f"zerospeed does not provide {feature}", feature) from None


for _name, _path in CONFIG_ACCESSORS.items():
    setattr(EngineCompat, _name, _accessor(_name, _path))
