"""`zerospeed.initialize()`: DeepSpeed's entry point, same arguments, same 4-tuple."""

from __future__ import annotations

import sys
from typing import Any

import torch

from zerospeed import comm
from zerospeed.errors import ConfigError


def _config_source(args, config, config_params):
    from_args = None
    if args is not None:
        from_args = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    given = config if config is not None else config_params
    if from_args is not None and given is not None:
        raise ConfigError(
            "two configs given: args.deepspeed_config and initialize(config=...); pass only one of them"
        )
    source = given if given is not None else from_args
    if source is None:
        raise ConfigError(
            "no config: pass initialize(config=<dict or path>) or args with --deepspeed_config <path>"
        )
    return source


def _auto_values(optimizer, training_data) -> dict[str, Any]:
    """What initialize() can learn for "auto" config values from the objects it was given."""
    values: dict[str, Any] = {}
    if isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups:
        group = optimizer.param_groups[0]
        for key in ("lr", "betas", "eps", "weight_decay", "momentum"):
            if key in group:
                values[f"optimizer.params.{key}"] = group[key]
    batch_size = getattr(training_data, "batch_size", None)
    if isinstance(batch_size, int):
        values["train_micro_batch_size_per_gpu"] = batch_size
    return values


def initialize(
    args=None,
    model: torch.nn.Module | None = None,
    optimizer=None,
    model_parameters=None,
    training_data=None,
    lr_scheduler=None,
    distributed_port: int = 29500,
    mpu=None,
    dist_init_required: bool | None = None,
    collate_fn=None,
    config=None,
    mesh_param=None,
    config_params=None,
):
    """Build the engine; returns `(engine, optimizer, training_dataloader, lr_scheduler)`.

    The config is parsed and validated before any process-group work, so a bad config
    fails identically on every rank instead of leaving some ranks in a collective.
    """
    from zerospeed.config import load_config
    from zerospeed.runtime.engine import Engine

    if model is None:
        raise ConfigError("initialize() needs model=<torch.nn.Module>")
    if mesh_param is not None:
        raise ConfigError("initialize(mesh_param=...) (sequence/tensor-parallel meshes) is not supported yet")
    parsed = load_config(_config_source(args, config, config_params))
    if not comm.is_initialized():
        if dist_init_required is False:
            raise ConfigError("dist_init_required=False but torch.distributed is not initialized")
        comm.init_distributed(distributed_port=distributed_port)
    engine_class = Engine
    pipe_module = sys.modules.get("zerospeed.pipe.module")  # not imported: model cannot be a PipelineModule
    if pipe_module is not None and isinstance(model, pipe_module.PipelineModule):
        if mpu is not None:
            raise ConfigError("initialize(mpu=...) must be None for a PipelineModule: its topology defines the groups")
        from zerospeed.pipe.engine import PipelineEngine

        engine_class, mpu = PipelineEngine, model.mpu()
    world = mpu.get_data_parallel_world_size() if mpu is not None else comm.get_world_size()
    resolved = parsed.resolved(world, _auto_values(optimizer, training_data))
    engine = engine_class(
        model, resolved, optimizer=optimizer, model_parameters=model_parameters, lr_scheduler=lr_scheduler,
        training_data=training_data, collate_fn=collate_fn, mpu=mpu,
    )
    return engine, engine.optimizer, engine.training_dataloader, engine.lr_scheduler
