"""Rank-side bodies of the engine tests (importable by the spawned processes)."""

from __future__ import annotations

import torch

from tests.distributed.parity import global_micro_batch, make_model


def _config(**extra):
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "gradient_clipping": 0.0,
        "steps_per_print": 1000,
    }
    config.update(extra)
    return config


def fp16_overflow_run(overflow_steps: list[int]) -> dict:
    """fp16 training where rank 1 produces inf gradients at `overflow_steps`."""
    import zerospeed
    from zerospeed import comm

    rank = comm.get_rank()
    model = make_model()
    cfg = _config(fp16={"enabled": True, "initial_scale_power": 8, "hysteresis": 2, "loss_scale_window": 1000},
                  zero_optimization={"stage": 2})
    engine, optimizer, _, _ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    scales, applied, snapshots = [], [], []
    for step in range(6):
        tokens, targets = global_micro_batch(step, 0, 4)
        loss = engine(tokens[rank * 2 : rank * 2 + 2], targets[rank * 2 : rank * 2 + 2])
        if rank == 1 and step in overflow_steps:
            loss = loss * float("inf")
        snapshots.append(engine.module.up.weight.detach().float().clone())
        engine.backward(loss)
        engine.step()
        scales.append(optimizer.cur_scale)
        applied.append(engine.was_step_applied())
    snapshots.append(engine.module.up.weight.detach().float().clone())
    unchanged = [bool(torch.equal(snapshots[i], snapshots[i + 1])) for i in range(6)]
    return {"scales": scales, "applied": applied, "unchanged": unchanged, "skipped": engine.skipped_steps,
            "global_steps": engine.global_steps, "loss_scale_attr": optimizer.loss_scale}


def api_surface_run() -> dict:
    """Client optimizer/scheduler objects and callables, data loading, accessors, errors."""
    import zerospeed
    from zerospeed.errors import ConfigError, EngineError
    from zerospeed.runtime.data import RepeatingLoader

    out: dict = {}
    # 1. client optimizer + client torch scheduler object
    model = make_model()
    client = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(client, step_size=1, gamma=0.5)
    cfg = _config()
    del cfg["optimizer"]
    engine, opt, _, lr_sched = zerospeed.initialize(model=model, optimizer=client, lr_scheduler=sched, config=cfg)
    lrs = []
    for step in range(3):
        tokens, targets = global_micro_batch(step, 0, 2)
        engine.backward(engine(tokens, targets))
        engine.step()
        lrs.append(engine.get_lr()[0])
    out["client_sched_lrs"] = lrs
    out["client_sched_is_same"] = lr_sched is sched
    out["optimizer_param_groups_lr"] = opt.param_groups[0]["lr"]

    # 2. callables + config scheduler-free, training_data loader, accessors
    model = make_model()
    dataset = torch.utils.data.TensorDataset(torch.arange(20).view(10, 2), torch.arange(10))
    engine, opt, loader, sched2 = zerospeed.initialize(
        model=model,
        optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1)),
        model_parameters=model.parameters(),
        training_data=dataset,
        config=_config(train_batch_size=8, gradient_accumulation_steps=2, zero_optimization={"stage": 0}),
    )
    out["callable_inner"] = type(opt.optimizer).__name__
    out["loader_batches"] = [batch[1].tolist() for batch in loader]
    repeating = RepeatingLoader(loader)
    out["repeating_count"] = sum(1 for _, _ in zip(range(7), repeating))
    out["accessors"] = (engine.train_batch_size(), engine.train_micro_batch_size_per_gpu(),
                        engine.gradient_accumulation_steps(), engine.zero_optimization_stage(),
                        engine.fp16_enabled(), engine.bf16_enabled(), engine.world_size)
    out["boundaries"] = []
    for _ in range(4):
        out["boundaries"].append(engine.is_gradient_accumulation_boundary())
        tokens, targets = global_micro_batch(0, 0, 2)
        engine.backward(engine(tokens, targets))
        engine.step()
    out["mom"] = engine.get_mom()
    engine.set_train_batch_size(16)
    out["after_set_gas"] = engine.gradient_accumulation_steps()
    try:
        engine.set_train_batch_size(6)
    except ConfigError as error:
        out["set_bad_batch"] = str(error)

    # 3. errors
    model = make_model()
    engine, *_ = zerospeed.initialize(model=model, config=_config(zero_optimization={"stage": 2}))
    try:
        with engine.no_sync():
            pass
    except EngineError as error:
        out["no_sync_stage2"] = str(error)
    model.late = torch.nn.Linear(2, 2)
    tokens, targets = global_micro_batch(0, 0, 2)
    engine.backward(engine(tokens, targets))
    try:
        engine.step()
    except EngineError as error:
        out["late_param"] = str(error)
    model = make_model()
    try:
        zerospeed.initialize(model=model, config=_config(
            optimizer={"type": "SGD", "params": {"lr": 0.1}}, zero_optimization={"stage": 1}))
    except ConfigError as error:
        out["untested_optimizer"] = str(error)
    engine, *_ = zerospeed.initialize(model=make_model(), config=_config(
        optimizer={"type": "SGD", "params": {"lr": 0.1}}, zero_optimization={"stage": 1},
        zero_allow_untested_optimizer=True))
    out["untested_allowed_stage"] = engine.zero_optimization_stage()
    no_opt = _config()
    del no_opt["optimizer"]
    engine, opt_none, *_ = zerospeed.initialize(model=make_model(), config=no_opt)
    try:
        engine.backward(engine(tokens, targets))
    except EngineError as error:
        out["no_optimizer"] = str(error)
    out["no_optimizer_returns_none"] = opt_none is None
    return out


def memory_report_run(stage: int, bucket: int, dtype: str | None) -> dict:
    import zerospeed

    model = make_model()
    extra = {"zero_optimization": {"stage": stage, "reduce_bucket_size": bucket}}
    if dtype:
        extra[dtype] = {"enabled": True}
    engine, optimizer, _, _ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=_config(**extra))
    tokens, targets = global_micro_batch(0, 0, 4)
    engine.backward(engine(tokens[:2], targets[:2]))
    engine.step()
    report = engine.memory_report()
    moments = sum(
        state["exp_avg"].numel() + state["exp_avg_sq"].numel() for state in optimizer.state.values()
    )
    numels = [p.numel() for p in model.parameters() if p.requires_grad]
    frozen_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return {"report": report, "moment_elements": moments, "numels": numels, "frozen_bytes": frozen_bytes}


def safe_helpers_run(stage: int) -> dict:
    """DeepSpeed's safe_get/safe_set helpers against values known without ZeRO."""
    import zerospeed
    from zerospeed import comm
    from zerospeed.utils import (
        safe_get_full_fp32_param, safe_get_full_grad, safe_get_full_optimizer_state,
        safe_set_full_fp32_param, safe_set_full_optimizer_state,
    )

    rank = comm.get_rank()
    model = make_model()
    reference = make_model()
    engine, *_ = zerospeed.initialize(model=model, config=_config(zero_optimization={"stage": stage, "reduce_bucket_size": 300}))
    tokens, targets = global_micro_batch(0, 0, 4)
    loss = engine(tokens[rank * 2 : rank * 2 + 2], targets[rank * 2 : rank * 2 + 2])
    engine.backward(loss)
    reference(tokens, targets).backward()
    weight = engine.module.up.weight
    out = {
        "param_equal": bool(torch.equal(safe_get_full_fp32_param(weight), reference.up.weight.detach())),
        "grad_close": bool(torch.allclose(safe_get_full_grad(weight), reference.up.weight.grad, rtol=1e-5, atol=1e-7)),
    }
    engine.step()
    exp_avg = safe_get_full_optimizer_state(weight, "exp_avg")
    out["exp_avg_close"] = bool(torch.allclose(exp_avg, 0.1 * reference.up.weight.grad, rtol=1e-4, atol=1e-8))
    safe_set_full_fp32_param(weight, torch.full(weight.shape, 0.5))
    out["set_param_visible"] = bool((engine.module.up.weight.detach() == 0.5).all())
    safe_set_full_optimizer_state(weight, torch.full(weight.shape, 2.0), "exp_avg")
    out["set_state_visible"] = bool((safe_get_full_optimizer_state(weight, "exp_avg") == 2.0).all())
    return out


def staging_run() -> dict:
    """Eight equal layers, one bucket each, every parameter used: staging stays bounded."""
    import zerospeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(8)])
    engine, *_ = zerospeed.initialize(
        model=model, config=_config(zero_optimization={"stage": 2, "reduce_bucket_size": 272})
    )
    for _ in range(2):
        engine.backward(engine(torch.randn(2, 16)).square().mean())
        engine.step()
    return engine.memory_report()
