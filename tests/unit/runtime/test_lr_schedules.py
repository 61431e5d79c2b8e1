"""LR schedules give DeepSpeed 0.19.8's numbers: tables from the closed-form formulas.

Each expected table is written from the documented formula, independently of the code, and
lists the lr *in effect for optimizer step s* (read before the engine's scheduler.step()).
For the warmup schedules that is formula(s - 1) with formula(-1) the start value; for
LRRangeTest and OneCycle it is formula(s) (COMPATIBILITY.md).
"""

from __future__ import annotations

import argparse
import math
from types import SimpleNamespace

import pytest
import torch

from zerospeed.errors import ConfigError
from zerospeed.runtime import lr_schedules
from zerospeed.runtime.lr_schedules import LRRangeTest, OneCycle, WarmupCosineLR, WarmupDecayLR, WarmupLR
from zerospeed.runtime.schedulers import build_scheduler

STEPS = 40


def sgd(lr: float = 0.1, groups: int = 1, momentum: float = 0.0) -> torch.optim.SGD:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def adam(lr: float = 0.1) -> torch.optim.Adam:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lrs_in_effect(scheduler, optimizer, steps: int = STEPS, group: int = 0) -> list[float]:
    """The lr each optimizer step would use, stepping the scheduler after it as the engine does."""
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[group]["lr"])
        scheduler.step()
    return seen


def assert_table(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for s, (a, e) in enumerate(zip(actual, expected)):
        assert math.isclose(a, e, rel_tol=1e-12, abs_tol=1e-15), f"step {s}: got {a!r}, expected {e!r}"


# ---------------------------------------------------------------- WarmupLR


def test_warmup_lr_log_table():
    low, high, n = 0.001, 0.01, 10
    opt = sgd()
    sched = WarmupLR(opt, warmup_min_lr=low, warmup_max_lr=high, warmup_num_steps=n, warmup_type="log")

    def formula(t):
        if t < 0:
            return low
        return low + (high - low) * math.log(t + 1) / math.log(n) if t < n else high

    assert_table(lrs_in_effect(sched, opt), [formula(s - 1) for s in range(STEPS)])


def test_warmup_lr_offset_by_hand():
    # min 0, max 0.01, N 10, log: step 0 and 1 run at 0, step 2 at 0.01 * log 2 / log 10.
    opt = sgd()
    sched = WarmupLR(opt, warmup_min_lr=0.0, warmup_max_lr=0.01, warmup_num_steps=10)
    seen = lrs_in_effect(sched, opt, steps=12)
    assert seen[0] == 0.0 and seen[1] == 0.0
    assert math.isclose(seen[2], 0.0030102999566398120, rel_tol=1e-12)  # 0.01 * 0.30103
    assert math.isclose(seen[10], 0.01 * math.log10(10), rel_tol=1e-12)  # formula(9) = max
    assert seen[11] == 0.01


def test_warmup_lr_linear_table():
    low, high, n = 0.002, 0.012, 8
    opt = sgd()
    sched = WarmupLR(opt, warmup_min_lr=low, warmup_max_lr=high, warmup_num_steps=n, warmup_type="linear")
    expected = [low] + [low + (high - low) * min(t, n) / n for t in range(STEPS - 1)]
    assert_table(lrs_in_effect(sched, opt), expected)
    # by hand: step 5 uses t = 4 -> 0.002 + 0.01 * 4 / 8 = 0.007
    assert math.isclose(expected[5], 0.007, rel_tol=1e-12)


def test_warmup_lr_defaults_max_to_group_lr_and_per_group_lists():
    opt = sgd(lr=0.05, groups=2)
    sched = WarmupLR(opt, warmup_min_lr=[0.0, 0.01], warmup_num_steps=4, warmup_type="linear")
    expected0 = [0.0] + [0.05 * min(t, 4) / 4 for t in range(STEPS - 1)]
    expected1 = [0.01] + [0.01 + 0.04 * min(t, 4) / 4 for t in range(STEPS - 1)]
    seen0, seen1 = [], []
    for _ in range(STEPS):
        seen0.append(opt.param_groups[0]["lr"])
        seen1.append(opt.param_groups[1]["lr"])
        sched.step()
    assert_table(seen0, expected0)
    assert_table(seen1, expected1)
    assert sched.get_last_lr() == [0.05, 0.05]


def test_warmup_num_steps_below_two_becomes_two():
    opt = sgd()
    sched = WarmupLR(opt, warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=1, warmup_type="linear")
    assert sched.warmup_num_steps == 2
    assert lrs_in_effect(sched, opt, steps=4) == [0.0, 0.0, 0.5, 1.0]


# ---------------------------------------------------------------- WarmupDecayLR


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
def test_warmup_decay_lr_table(warmup_type):
    low, high, n, total = 0.001, 0.011, 6, 30

    def formula(t):
        if t < 0:
            return low
        if t < n:
            rise = math.log(t + 1) / math.log(n) if warmup_type == "log" else t / n
            return low + (high - low) * rise
        return low + (high - low) * max(0.0, (total - t) / (total - n))

    opt = sgd()
    sched = WarmupDecayLR(opt, total_num_steps=total, warmup_min_lr=low, warmup_max_lr=high,
                          warmup_num_steps=n, warmup_type=warmup_type)
    seen = lrs_in_effect(sched, opt)
    assert_table(seen, [formula(s - 1) for s in range(STEPS)])
    # by hand: step 19 uses t = 18 -> 0.001 + 0.01 * 12 / 24 = 0.006; from step 31 on: min lr
    assert math.isclose(seen[19], 0.006, rel_tol=1e-12)
    assert seen[31:] == [low] * (STEPS - 31)


# ---------------------------------------------------------------- WarmupCosineLR


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
def test_warmup_cosine_lr_table(warmup_type):
    base, warm_min, cos_min, n, total = 0.1, 0.1, 0.01, 5, 25

    def ratio(t):
        if t < 0:
            return 0.0
        if t < n:
            rise = math.log(t + 1) / math.log(n) if warmup_type == "log" else t / n
            return warm_min + (1 - warm_min) * rise
        progress = min(1.0, (t - n + 1) / (total - n))
        return cos_min + (1 - cos_min) * (1 + math.cos(math.pi * progress)) / 2

    opt = sgd(lr=base)
    sched = WarmupCosineLR(opt, total_num_steps=total, warmup_min_ratio=warm_min, warmup_num_steps=n,
                           cos_min_ratio=cos_min, warmup_type=warmup_type)
    seen = lrs_in_effect(sched, opt)
    assert_table(seen, [base * ratio(s - 1) for s in range(STEPS)])
    # by hand: step 0 runs at 0; step 1 at 0.1 * warmup_min_ratio = 0.01; step 15 uses t = 14,
    # progress (14 - 5 + 1) / 20 = 0.5 -> ratio 0.01 + 0.99 / 2 = 0.505; capped at 0.001 past the end.
    assert seen[0] == 0.0
    assert math.isclose(seen[1], 0.01, rel_tol=1e-12)
    assert math.isclose(seen[15], 0.0505, rel_tol=1e-12)
    assert all(math.isclose(lr, 0.001, rel_tol=1e-12) for lr in seen[25:])


# ---------------------------------------------------------------- LRRangeTest


@pytest.mark.parametrize("staircase", [False, True])
def test_lr_range_test_table(staircase):
    low, size, rate = 0.01, 4, 0.5
    opt = sgd()
    sched = LRRangeTest(opt, lr_range_test_min_lr=low, lr_range_test_step_size=size,
                        lr_range_test_step_rate=rate, lr_range_test_staircase=staircase)
    interval = (lambda s: s // size) if staircase else (lambda s: s / size)
    seen = lrs_in_effect(sched, opt)
    assert_table(seen, [low * (1 + rate * interval(s)) for s in range(STEPS)])
    # by hand: no offset, step 8 runs at 0.01 * (1 + 0.5 * 2) = 0.02 either way
    assert math.isclose(seen[8], 0.02, rel_tol=1e-12)


# ---------------------------------------------------------------- OneCycle


def test_one_cycle_lr_and_momentum_table():
    lr_min, lr_max, first, second = 0.01, 0.1, 10, 6
    mom_min, mom_max, decay_size, lr_rate, mom_rate = 0.85, 0.95, 4, 0.5, 0.01
    total = first + second

    def scale(s):  # 0 at the cycle's ends, 1 at its peak; s = batches trained so far
        return s / first if s <= first else (total - s) / second

    def lr(s):
        if s <= total:
            return lr_min + (lr_max - lr_min) * scale(s)
        return lr_min / (1 + lr_rate * (s - total) / decay_size)

    def beta1(s):
        if s <= total:
            return mom_max - (mom_max - mom_min) * scale(s)
        return mom_max * (1 + mom_rate * (s - total) / decay_size)

    opt = adam()
    sched = OneCycle(opt, cycle_min_lr=lr_min, cycle_max_lr=lr_max, decay_lr_rate=lr_rate,
                     cycle_first_step_size=first, cycle_second_step_size=second, decay_step_size=decay_size,
                     cycle_min_mom=mom_min, cycle_max_mom=mom_max, decay_mom_rate=mom_rate)
    seen_lr, seen_betas = [], []
    for _ in range(STEPS):
        seen_lr.append(opt.param_groups[0]["lr"])
        seen_betas.append(opt.param_groups[0]["betas"])
        sched.step()
    assert_table(seen_lr, [lr(s) for s in range(STEPS)])
    # Construction writes cycle_min_mom (DeepSpeed does), although the cycle formula at 0 is max.
    expected_beta1 = [mom_min] + [beta1(s) for s in range(1, STEPS)]
    assert_table([b[0] for b in seen_betas], expected_beta1)
    assert all(b[1] == 0.99 for b in seen_betas)  # DeepSpeed pins beta2 to 0.99
    # by hand: peak at step 10; step 13 is half way down: 0.1 - 0.09 * 3 / 6 = 0.055, beta1 0.9;
    # step 24 is 8 batches into the decay: 0.01 / (1 + 0.5 * 2) = 0.005, beta1 0.95 * 1.02
    assert math.isclose(seen_lr[10], 0.1, rel_tol=1e-12)
    assert math.isclose(seen_lr[13], 0.055, rel_tol=1e-12)
    assert math.isclose(seen_betas[13][0], 0.9, rel_tol=1e-12)
    assert math.isclose(seen_lr[24], 0.005, rel_tol=1e-12)
    assert math.isclose(seen_betas[24][0], 0.969, rel_tol=1e-12)


def test_one_cycle_staircase_and_no_decay():
    opt = adam()
    sched = OneCycle(opt, 0.0, 1.0, cycle_first_step_size=8, cycle_first_stair_count=4)
    # second half = first (8), stairs = 4 each: value floor(k * 4 / 8) / 4, then min lr forever
    expected = [math.floor(s * 4 / 8) / 4 if s <= 8 else math.floor((16 - s) * 4 / 8) / 4 if s <= 16 else 0.0
                for s in range(STEPS)]
    assert_table(lrs_in_effect(sched, opt), expected)


def test_one_cycle_keeps_sgd_momentum():
    opt = sgd(momentum=0.9)
    sched = OneCycle(opt, 0.01, 0.1, cycle_first_step_size=5)
    seen = lrs_in_effect(sched, opt, steps=12)
    assert_table(seen, [0.01 + 0.09 * (s / 5 if s <= 5 else max(0, 10 - s) / 5) for s in range(12)])
    assert sched.cycle_momentum is False
    assert opt.param_groups[0]["momentum"] == 0.9 and "betas" not in opt.param_groups[0]


# ---------------------------------------------------------------- common behaviour


SCHEDULES = {
    "WarmupLR": lambda o: WarmupLR(o, 0.0, 0.1, 7, "log"),
    "WarmupDecayLR": lambda o: WarmupDecayLR(o, 30, 0.0, 0.1, 7, "linear"),
    "WarmupCosineLR": lambda o: WarmupCosineLR(o, 30, 0.05, 7, 0.01, "log"),
    "LRRangeTest": lambda o: LRRangeTest(o, 0.01, 3, 2.0, True),
    "OneCycle": lambda o: OneCycle(o, 0.01, 0.1, 0.2, 6, 4, decay_step_size=3, decay_mom_rate=0.01),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_state_dict_round_trip_continues_identically(name):
    make = SCHEDULES[name]
    opt_a = adam()
    sched_a = make(opt_a)
    for _ in range(17):
        sched_a.step()
    state = sched_a.state_dict()
    assert state == {"last_batch_iteration": 16}

    opt_b = adam()
    sched_b = make(opt_b)
    sched_b.load_state_dict(state)
    assert sched_b.last_batch_iteration == 16
    for _ in range(20):
        sched_a.step()
        sched_b.step()
        assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
        assert opt_a.param_groups[0]["betas"] == opt_b.param_groups[0]["betas"]
        assert sched_a.get_last_lr() == sched_b.get_last_lr()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_step_to_explicit_iteration(name):
    opt_a, opt_b = adam(), adam()
    sched_a, sched_b = SCHEDULES[name](opt_a), SCHEDULES[name](opt_b)
    for _ in range(12):
        sched_a.step()
    sched_b.step(11)
    assert sched_b.last_batch_iteration == 11
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]


def test_resume_constructor_leaves_lr_alone():
    opt = sgd(lr=0.123)
    sched = WarmupLR(opt, 0.0, 0.1, 10, last_batch_iteration=5)
    assert opt.param_groups[0]["lr"] == 0.123
    sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 0.1 * math.log(7) / math.log(10), rel_tol=1e-12)


def test_tensor_lr_is_filled_in_place():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(0.1))
    lr_tensor = opt.param_groups[0]["lr"]
    sched = WarmupLR(opt, 0.0, 0.5, 4, "linear")
    sched.step()
    sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor
    assert lr_tensor.item() == pytest.approx(0.125)


def test_works_through_a_wrapper_holding_the_optimizer():
    opt = sgd()
    sched = WarmupLR(SimpleNamespace(optimizer=opt), 0.0, 0.1, 10, "linear")
    sched.step(5)
    assert math.isclose(opt.param_groups[0]["lr"], 0.05, rel_tol=1e-12)
    with pytest.raises(TypeError, match="not a subclass of torch.optim.Optimizer"):
        WarmupLR(object())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="warmup_num_steps"):
        WarmupLR(sgd(), warmup_num_steps=0)
    with pytest.raises(ValueError, match="expected 2 value for min_lr"):
        WarmupLR(sgd(groups=2), warmup_min_lr=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="cycle_first_step_size"):
        OneCycle(adam(), 0.01, 0.1, cycle_first_step_size=0)
    with pytest.raises(ValueError, match="lr_range_test_step_size"):
        LRRangeTest(sgd(), lr_range_test_step_size=0)


# ---------------------------------------------------------------- build_scheduler


def test_build_scheduler_from_dict_and_object_any_case():
    opt = sgd()
    sched = build_scheduler({"type": "warmupdecaylr", "params": {"total_num_steps": 20, "warmup_num_steps": 5}}, opt)
    assert type(sched) is WarmupDecayLR and sched.total_num_steps == 20
    section = SimpleNamespace(type="WarmupCosineLR", params={"total_num_steps": 10, "warmup_num_steps": 2})
    assert type(build_scheduler(section, opt)) is WarmupCosineLR
    assert build_scheduler(None, opt) is None
    # DeepSpeed falls back to torch.optim.lr_scheduler, and so do we
    step_lr = build_scheduler({"type": "StepLR", "params": {"step_size": 3}}, opt)
    assert isinstance(step_lr, torch.optim.lr_scheduler.StepLR)


def test_build_scheduler_errors_name_the_key():
    opt = sgd()
    with pytest.raises(ConfigError, match=r"scheduler\.params\.total_num_steps: required .*WarmupDecayLR"):
        build_scheduler({"type": "WarmupDecayLR", "params": {"warmup_num_steps": 5}}, opt)
    with pytest.raises(ConfigError, match=r"scheduler\.type = 'WarmupLinear'.*did you mean 'WarmupLR'"):
        build_scheduler({"type": "WarmupLinear", "params": {}}, opt)
    with pytest.raises(ConfigError, match=r"scheduler\.params\.warmup_max = 0\.1.*did you mean 'warmup_max_lr'"):
        build_scheduler({"type": "WarmupLR", "params": {"warmup_max": 0.1}}, opt)
    with pytest.raises(ConfigError, match=r"scheduler\.params\.warmup_type = 'cosine'.*allowed: log, linear"):
        build_scheduler({"type": "WarmupLR", "params": {"warmup_type": "cosine"}}, opt)
    with pytest.raises(ConfigError, match=r"scheduler\.params for type 'WarmupLR'.*warmup_num_steps"):
        build_scheduler({"type": "WarmupLR", "params": {"warmup_num_steps": -3}}, opt)


# ---------------------------------------------------------------- module helpers scripts use


def test_tuning_arguments_and_config_from_args():
    parser = lr_schedules.add_tuning_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--lr_schedule", "WarmupLR", "--warmup_max_lr", "0.02", "--warmup_type", "linear"])
    assert args.warmup_num_steps == 1000 and args.cycle_momentum is False
    config, error = lr_schedules.get_config_from_args(args)
    assert error is None
    assert config == {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.02,
                                                     "warmup_num_steps": 1000, "warmup_type": "linear"}}
    assert lr_schedules.get_lr_from_config(config) == (0.02, "")
    assert lr_schedules.get_config_from_args(argparse.Namespace(lr_schedule=None))[0] is None
    assert "not supported" in lr_schedules.get_config_from_args(argparse.Namespace(lr_schedule="X"))[1]
    one_cycle = {"type": lr_schedules.ONE_CYCLE, "params": {lr_schedules.CYCLE_MAX_LR: 0.3}}
    assert lr_schedules.get_lr_from_config(one_cycle) == (0.3, "")
    assert lr_schedules.get_lr_from_config({"type": "WarmupCosineLR", "params": {}})[0] is None
    assert lr_schedules.VALID_LR_SCHEDULES == ["LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"]
