"""ZeRO stage 3 memory rules on 2 ranks, checked through the coordinator's and reducer's books:
a frozen unit is released right after its module's backward (not at the end of backward),
gradient partitions hold memory only from the first reduction to the step, and prefetch
stays within stage3_prefetch_bucket_size and stage3_max_live_parameters.
"""

from tests.distributed.launcher import run_distributed
from tests.distributed.parity import global_micro_batch, make_model, train_steps

PREFETCH, MAX_LIVE = 500, 700


def _engine(zero: dict):
    import zerospeed

    model = make_model()
    config = {"train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, **zero}}
    engine, *_ = zerospeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=config)
    return engine


def _frozen_and_gradient_memory():
    from zerospeed import comm
    from zerospeed.zero.stage3.params import unit_of

    engine = _engine({"stage3_prefetch_bucket_size": 0})
    model, coordinator = engine.module, engine.optimizer.coordinator
    frozen = unit_of(model.frozen.weight)
    seen = []
    # `up` is the last trainable module backward reaches before the embedding: the frozen
    # layer's backward (it sits after `up` in forward) is long done when up.weight's gradient arrives.
    model.up.weight.register_hook(lambda grad: seen.append((frozen.full_bytes(), coordinator.gathered_bytes())))
    rank, world = comm.get_rank(), comm.get_world_size()
    facts = {}
    for step in range(3):
        tokens, targets = global_micro_batch(step, 0, 2 * world)
        mine = slice(2 * rank, 2 * rank + 2)
        facts.setdefault("grads_before_backward", []).append(engine.memory_report()["grads"])
        loss = engine(tokens[mine], targets[mine])
        engine.backward(loss)
        facts.setdefault("grads_after_backward", []).append(engine.memory_report()["grads"])
        engine.step()
        facts.setdefault("grads_after_step", []).append(engine.memory_report()["grads"])
    facts["frozen_bytes_during_backward"] = [frozen_bytes for frozen_bytes, _ in seen]
    facts["frozen_unit_bytes"] = frozen.layout.gathered_numel * 4
    facts["partition_bytes"] = sum(s.partition.numel() * 4 for s in engine.optimizer.reducer.states)
    facts["gathered_after_step"] = coordinator.gathered_bytes()
    return facts


def test_frozen_unit_released_after_its_backward_and_gradients_freed_after_step():
    for facts in run_distributed(_frozen_and_gradient_memory, 2):
        assert facts["frozen_bytes_during_backward"] == [0, 0, 0], facts  # was its full size until backward ended
        assert facts["frozen_unit_bytes"] > 0
        assert facts["grads_after_backward"] == [facts["partition_bytes"]] * 3
        assert facts["grads_before_backward"] == [0, 0, 0] and facts["grads_after_step"] == [0, 0, 0]
        assert facts["gathered_after_step"] == 0


def _prefetch_bounds():
    facts = {}
    for name, zero in (("on_demand", {"stage3_prefetch_bucket_size": 0, "stage3_max_live_parameters": 0}),
                       ("bounded", {"stage3_prefetch_bucket_size": PREFETCH, "stage3_max_live_parameters": MAX_LIVE}),
                       ("default", {})):
        engine = _engine(zero)
        coordinator = engine.optimizer.coordinator
        train_steps(engine, 4, 2, 1)
        facts[name] = coordinator.stats.as_dict()
        facts[name]["largest_unit"] = max(u.numel for u in coordinator.units)
        facts[name]["model_numel"] = sum(u.numel for u in coordinator.units)
    return facts


def test_prefetch_stays_within_bucket_size_and_max_live():
    for facts in run_distributed(_prefetch_bounds, 2):
        on_demand, bounded, default = facts["on_demand"], facts["bounded"], facts["default"]
        assert on_demand["prefetches"] == 0 and on_demand["peak_prefetched_numel"] == 0
        assert bounded["prefetches"] > 0 and default["prefetches"] > 0
        assert bounded["peak_prefetched_numel"] <= min(PREFETCH, MAX_LIVE)
        # what prefetch and reuse keep comes on top of what the running modules need, within max_live
        assert bounded["peak_live_numel"] <= MAX_LIVE + on_demand["peak_live_numel"]
        assert on_demand["peak_live_numel"] < on_demand["model_numel"]  # units are released as it goes
        assert bounded["live_numel"] == on_demand["live_numel"] == 0  # nothing gathered between steps
