"""DeepSpeed's learning-rate schedules (`deepspeed.runtime.lr_schedules`), same names and numbers.

Five schedules, each with DeepSpeed 0.19.8's constructor signature and formulas, so a script
(or a config's `scheduler` section) gives the same learning rate at every step:

- `LRRangeTest`: min_lr * (1 + rate * (t + 1) / step_size), optionally floored to stairs.
- `OneCycle`: one triangular cycle min -> max -> min (momentum the other way), then decay.
- `WarmupLR`: log or linear warmup from min to max lr, then flat.
- `WarmupDecayLR`: WarmupLR, then linear decay to 0 at `total_num_steps`.
- `WarmupCosineLR`: warmup of a ratio of each group's own lr, then cosine decay.

`t` is `last_batch_iteration`, the index of the batch just trained; `step()` advances it and
writes the new lr into every param group. Constructed with last_batch_iteration=-1, a
schedule writes its value at t = -1 (the warmup schedules' start value) and the engine steps
it after each optimizer step, so the lr used by optimizer step s is the formula at t = s - 1.
A checkpoint holds only `last_batch_iteration`.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from torch import is_tensor
from torch.optim import Optimizer

from zerospeed.utils.logging import logger

LR_SCHEDULE = "lr_schedule"
LR_RANGE_TEST = "LRRangeTest"
ONE_CYCLE = "OneCycle"
WARMUP_LR = "WarmupLR"
WARMUP_DECAY_LR = "WarmupDecayLR"
WARMUP_COSINE_LR = "WarmupCosineLR"
VALID_LR_SCHEDULES = [LR_RANGE_TEST, ONE_CYCLE, WARMUP_LR, WARMUP_DECAY_LR, WARMUP_COSINE_LR]

LR_RANGE_TEST_MIN_LR = "lr_range_test_min_lr"
LR_RANGE_TEST_STEP_RATE = "lr_range_test_step_rate"
LR_RANGE_TEST_STEP_SIZE = "lr_range_test_step_size"
LR_RANGE_TEST_STAIRCASE = "lr_range_test_staircase"

EDGE_VALUE = "edge_value"
MID_VALUE = "mid_value"

CYCLE_FIRST_STEP_SIZE = "cycle_first_step_size"
CYCLE_FIRST_STAIR_COUNT = "cycle_first_stair_count"
CYCLE_SECOND_STEP_SIZE = "cycle_second_step_size"
CYCLE_SECOND_STAIR_COUNT = "cycle_second_stair_count"
DECAY_STEP_SIZE = "decay_step_size"

CYCLE_MIN_LR = "cycle_min_lr"
CYCLE_MAX_LR = "cycle_max_lr"
DECAY_LR_RATE = "decay_lr_rate"

CYCLE_MIN_MOM = "cycle_min_mom"
CYCLE_MAX_MOM = "cycle_max_mom"
DECAY_MOM_RATE = "decay_mom_rate"

WARMUP_MIN_LR = "warmup_min_lr"
WARMUP_MAX_LR = "warmup_max_lr"
WARMUP_NUM_STEPS = "warmup_num_steps"
WARMUP_TYPE = "warmup_type"
WARMUP_LOG_RATE = "log"
WARMUP_LINEAR_RATE = "linear"

WARMUP_MIN_RATIO = "warmup_min_ratio"
COS_MIN_RATIO = "cos_min_ratio"

TOTAL_NUM_STEPS = "total_num_steps"

# (flag, type, default, help) of DeepSpeed's "Convergence Tuning" argument group; type None
# means a store_true switch.
_TUNING_ARGUMENTS = [
    (LR_SCHEDULE, str, None, "LR schedule for training."),
    (LR_RANGE_TEST_MIN_LR, float, 0.001, "Starting lr value."),
    (LR_RANGE_TEST_STEP_RATE, float, 1.0, "scaling rate for LR range test."),
    (LR_RANGE_TEST_STEP_SIZE, int, 1000, "training steps per LR change."),
    (LR_RANGE_TEST_STAIRCASE, None, False, "use staircase scaling for LR range test."),
    (CYCLE_FIRST_STEP_SIZE, int, 1000, "size of first step of 1Cycle schedule (training steps)."),
    (CYCLE_FIRST_STAIR_COUNT, int, -1, "first stair count for 1Cycle schedule."),
    (CYCLE_SECOND_STEP_SIZE, int, -1, "size of second step of 1Cycle schedule (default first_step_size)."),
    (CYCLE_SECOND_STAIR_COUNT, int, -1, "second stair count for 1Cycle schedule."),
    (DECAY_STEP_SIZE, int, 1000, "size of intervals for applying post cycle decay (training steps)."),
    (CYCLE_MIN_LR, float, 0.01, "1Cycle LR lower bound."),
    (CYCLE_MAX_LR, float, 0.1, "1Cycle LR upper bound."),
    (DECAY_LR_RATE, float, 0.0, "post cycle LR decay rate."),
    ("cycle_momentum", None, False, "Enable 1Cycle momentum schedule."),
    (CYCLE_MIN_MOM, float, 0.8, "1Cycle momentum lower bound."),
    (CYCLE_MAX_MOM, float, 0.9, "1Cycle momentum upper bound."),
    (DECAY_MOM_RATE, float, 0.0, "post cycle momentum decay rate."),
    (WARMUP_MIN_LR, float, 0, "WarmupLR minimum/initial LR value"),
    (WARMUP_MAX_LR, float, 0.001, "WarmupLR maximum LR value."),
    (WARMUP_NUM_STEPS, int, 1000, "WarmupLR step count for LR warmup."),
    (WARMUP_TYPE, str, WARMUP_LOG_RATE, "WarmupLR increasing function during warmup"),
    (WARMUP_MIN_RATIO, float, 0.01, "Cosine LR lower bound."),
    (COS_MIN_RATIO, float, 0.01, "Cosine LR lower bound."),
]

# Which command-line arguments feed each schedule's params (DeepSpeed's override_* functions).
_LR_RANGE_TEST_ARGS = [LR_RANGE_TEST_MIN_LR, LR_RANGE_TEST_STEP_RATE, LR_RANGE_TEST_STEP_SIZE, LR_RANGE_TEST_STAIRCASE]
_ONE_CYCLE_ARGS = [
    CYCLE_FIRST_STEP_SIZE, CYCLE_FIRST_STAIR_COUNT, CYCLE_SECOND_STEP_SIZE, CYCLE_SECOND_STAIR_COUNT,
    DECAY_STEP_SIZE, CYCLE_MIN_LR, CYCLE_MAX_LR, DECAY_LR_RATE, CYCLE_MIN_MOM, CYCLE_MAX_MOM, DECAY_MOM_RATE,
]
_WARMUP_LR_ARGS = [WARMUP_MIN_LR, WARMUP_MAX_LR, WARMUP_NUM_STEPS, WARMUP_TYPE]
_WARMUP_COSINE_LR_ARGS = [WARMUP_NUM_STEPS, WARMUP_TYPE, WARMUP_MIN_RATIO, COS_MIN_RATIO]


def add_tuning_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's 'Convergence Tuning' arguments (--lr_schedule, --warmup_max_lr, ...)."""
    group = parser.add_argument_group("Convergence Tuning", "Convergence tuning configurations")
    for name, kind, default, help_text in _TUNING_ARGUMENTS:
        if kind is None:
            group.add_argument(f"--{name}", default=default, action="store_true", help=help_text)
        else:
            group.add_argument(f"--{name}", type=kind, default=default, help=help_text)
    return parser


def parse_arguments() -> tuple[argparse.Namespace, list[str]]:
    """Parse the tuning arguments from sys.argv, leaving the rest for the caller."""
    return add_tuning_arguments(argparse.ArgumentParser()).parse_known_args()


def _override(args: Any, params: dict[str, Any], names: list[str]) -> None:
    for name in names:
        if getattr(args, name, None) is not None:
            params[name] = getattr(args, name)


def override_lr_range_test_params(args: Any, params: dict[str, Any]) -> None:
    _override(args, params, _LR_RANGE_TEST_ARGS)


def override_1cycle_params(args: Any, params: dict[str, Any]) -> None:
    _override(args, params, _ONE_CYCLE_ARGS)


def override_warmupLR_params(args: Any, params: dict[str, Any]) -> None:  # noqa: N802 - DeepSpeed's name
    _override(args, params, _WARMUP_LR_ARGS)


def override_warmupCosineLR_params(args: Any, params: dict[str, Any]) -> None:  # noqa: N802 - DeepSpeed's name
    _override(args, params, _WARMUP_COSINE_LR_ARGS)


def override_params(args: Any, params: dict[str, Any]) -> None:
    """Copy every tuning argument set on `args` into `params`."""
    for names in (_LR_RANGE_TEST_ARGS, _ONE_CYCLE_ARGS, _WARMUP_LR_ARGS, _WARMUP_COSINE_LR_ARGS):
        _override(args, params, names)


def get_config_from_args(args: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A scheduler config {'type', 'params'} from --lr_schedule and friends, or (None, why not)."""
    schedule = getattr(args, LR_SCHEDULE, None)
    if schedule is None:
        return None, f"--{LR_SCHEDULE} not specified on command line"
    if schedule not in VALID_LR_SCHEDULES:
        return None, f"{schedule} is not supported LR schedule"
    names = {
        LR_RANGE_TEST: _LR_RANGE_TEST_ARGS,
        ONE_CYCLE: _ONE_CYCLE_ARGS,
        WARMUP_COSINE_LR: _WARMUP_COSINE_LR_ARGS,
    }.get(schedule, _WARMUP_LR_ARGS)
    config: dict[str, Any] = {"type": schedule, "params": {}}
    _override(args, config["params"], names)
    return config, None


def get_lr_from_config(config: dict[str, Any]) -> tuple[Any, str]:
    """The peak lr a scheduler config sets, or (None, why there is none)."""
    if "type" not in config:
        return None, "LR schedule type not defined in config"
    if "params" not in config:
        return None, "LR schedule params not defined in config"
    schedule, params = config["type"], config["params"]
    if schedule not in VALID_LR_SCHEDULES:
        return None, f"{schedule} is not a valid LR schedule"
    if schedule == LR_RANGE_TEST:
        return params[LR_RANGE_TEST_MIN_LR], ""
    if schedule == ONE_CYCLE:
        return params[CYCLE_MAX_LR], ""
    if schedule == WARMUP_COSINE_LR:
        return None, f"{WARMUP_COSINE_LR} scales the optimizer learning rate by a ratio, so its params define no lr"
    return params[WARMUP_MAX_LR], ""


def update_lr(param_groups: list[dict[str, Any]], lrs: list[Any]) -> list[Any]:
    """Write `lrs` into the groups (in place for tensor lrs, as capturable optimizers need)."""
    for group, lr in zip(param_groups, lrs):
        if is_tensor(group["lr"]):
            group["lr"].fill_(lr.squeeze() if is_tensor(lr) else lr)
        else:
            group["lr"] = lr
    return [group["lr"] for group in param_groups]


def get_torch_optimizer(optimizer: Any) -> Optimizer:
    """The torch optimizer itself, or the one a wrapper (ZeRO, fp16) holds as `.optimizer`."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(getattr(optimizer, "optimizer", None), Optimizer):
        return optimizer.optimizer
    raise TypeError(f"{type(optimizer).__name__} is not a subclass of torch.optim.Optimizer")


def _per_group(optimizer: Optimizer, value: Any, name: str) -> list[Any]:
    """A scalar repeated for every param group, or a per-group list checked for length."""
    if isinstance(value, (list, tuple)):
        if len(value) != len(optimizer.param_groups):
            raise ValueError(f"expected {len(optimizer.param_groups)} value for {name}, got {len(value)}")
        return list(value)
    return [value] * len(optimizer.param_groups)


def _warmup_fraction(warmup_type: str, last_batch_iteration: int, warmup_num_steps: int) -> float:
    """0 -> 1 over the warmup: log(t + 1) / log(N) or t / N."""
    if warmup_type == WARMUP_LOG_RATE:
        return (1.0 / math.log(warmup_num_steps)) * math.log(last_batch_iteration + 1)
    return last_batch_iteration / warmup_num_steps


def _checked_warmup_type(warmup_type: str) -> str:
    if warmup_type not in (WARMUP_LOG_RATE, WARMUP_LINEAR_RATE):
        logger.warning(f"Using unknown warmup_type: {warmup_type}. The increasing function is set to default (log)")
        return WARMUP_LOG_RATE
    return warmup_type


def _checked_warmup_num_steps(warmup_num_steps: Any) -> int:
    if not isinstance(warmup_num_steps, int) or warmup_num_steps <= 0:
        raise ValueError(f"warmup_num_steps must be a positive integer, got {warmup_num_steps}")
    return max(2, warmup_num_steps)  # log warmup divides by log(N)


class _Schedule:
    """What every schedule shares: step(), the last lr, and a state of one counter."""

    optimizer: Optimizer
    last_batch_iteration: int

    def get_lr(self) -> list[Any]:
        raise NotImplementedError

    def step(self, last_batch_iteration: int | None = None) -> None:
        """Advance to batch `last_batch_iteration` (default: the next one) and set its lr."""
        if last_batch_iteration is None:
            last_batch_iteration = self.last_batch_iteration + 1
        self.last_batch_iteration = last_batch_iteration
        self._last_lr = update_lr(self.optimizer.param_groups, self.get_lr())

    def get_last_lr(self) -> list[Any]:
        """The lr of every group as last written by this schedule."""
        assert getattr(self, "_last_lr", None) is not None, "need to call step() first"
        return self._last_lr

    def state_dict(self) -> dict[str, int]:
        return {"last_batch_iteration": self.last_batch_iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_batch_iteration = state["last_batch_iteration"]


class LRRangeTest(_Schedule):
    """LR range test: lr = min_lr * (1 + step_rate * interval), interval = (t + 1) / step_size
    (floored when `lr_range_test_staircase`). Used to find the largest lr that still trains."""

    def __init__(
        self,
        optimizer: Optimizer,
        lr_range_test_min_lr: float = 1e-3,
        lr_range_test_step_size: int = 2000,
        lr_range_test_step_rate: float = 1.0,
        lr_range_test_staircase: bool = False,
        last_batch_iteration: int = -1,
    ) -> None:
        self.optimizer = get_torch_optimizer(optimizer)
        self.min_lr = _per_group(self.optimizer, lr_range_test_min_lr, "lr_range_test_min_lr")
        if not isinstance(lr_range_test_step_size, int) or lr_range_test_step_size <= 0:
            raise ValueError(f"lr_range_test_step_size must be a positive integer, got {lr_range_test_step_size}")
        self.step_size = lr_range_test_step_size
        self.step_rate = lr_range_test_step_rate
        self.staircase = lr_range_test_staircase
        self.last_batch_iteration = last_batch_iteration
        if last_batch_iteration == -1:
            self._last_lr = update_lr(self.optimizer.param_groups, self.min_lr)

    def _interval(self) -> float:
        interval = float(self.last_batch_iteration + 1) / self.step_size
        return math.floor(interval) if self.staircase else interval

    def get_lr(self) -> list[float]:
        increase = 1 + self.step_rate * self._interval()
        return [min_lr * increase for min_lr in self.min_lr]


class OneCycle(_Schedule):
    """1Cycle: lr rises min -> max over `cycle_first_step_size` batches and falls back over
    `cycle_second_step_size`; afterwards min_lr / (1 + decay_lr_rate * k / decay_step_size).

    With `cycle_momentum`, optimizers with `betas` (Adam family, Lion, Lamb) get
    betas = (momentum, 0.99), momentum moving max -> min -> max against the lr; others
    (SGD) keep their momentum, as in DeepSpeed. Stair counts hold values flat in steps.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        cycle_min_lr: float,
        cycle_max_lr: float,
        decay_lr_rate: float = 0.0,
        cycle_first_step_size: int = 2000,
        cycle_second_step_size: int | None = None,
        cycle_first_stair_count: int = 0,
        cycle_second_stair_count: int | None = None,
        decay_step_size: int = 0,
        cycle_momentum: bool = True,
        cycle_min_mom: float = 0.8,
        cycle_max_mom: float = 0.9,
        decay_mom_rate: float = 0.0,
        last_batch_iteration: int = -1,
    ) -> None:
        self.optimizer = get_torch_optimizer(optimizer)
        self._initialize_cycle(
            cycle_first_step_size, cycle_second_step_size, cycle_first_stair_count, cycle_second_stair_count,
            decay_step_size,
        )
        self.min_lrs = _per_group(self.optimizer, cycle_min_lr, "cycle_min_lr")
        self.max_lrs = _per_group(self.optimizer, cycle_max_lr, "cycle_max_lr")
        self.decay_lr_rate = decay_lr_rate
        if math.isclose(decay_lr_rate, 0):
            self.skip_lr_decay = True
        if last_batch_iteration == -1:
            self._last_lr = update_lr(self.optimizer.param_groups, self.min_lrs)
        self.cycle_momentum = cycle_momentum and self._supports_momentum()
        if self.cycle_momentum:
            self.decay_mom_rate = decay_mom_rate
            self.min_moms = [(m, 0.99) for m in _per_group(self.optimizer, cycle_min_mom, "cycle_min_mom")]
            self.max_moms = [(m, 0.99) for m in _per_group(self.optimizer, cycle_max_mom, "cycle_max_mom")]
            if last_batch_iteration == -1:
                for betas, group in zip(self.min_moms, self.optimizer.param_groups):
                    group["betas"] = betas
            if math.isclose(decay_mom_rate, 0):
                self.skip_mom_decay = True
        self.last_batch_iteration = last_batch_iteration

    def _initialize_cycle(
        self,
        first_step_size: float,
        second_step_size: float | None,
        first_stair_count: int,
        second_stair_count: int | None,
        decay_step_size: float,
    ) -> None:
        first_step_size = float(first_step_size)
        second_step_size = first_step_size if second_step_size is None else float(second_step_size)
        if first_step_size <= 0:
            raise ValueError(f"cycle_first_step_size must be positive, got {first_step_size}")
        if second_step_size < 0:
            raise ValueError(f"cycle_second_step_size must be non-negative, got {second_step_size}")
        self.total_size = first_step_size + second_step_size
        self.step_ratio = first_step_size / self.total_size
        self.first_step_size = first_step_size
        self.second_step_size = second_step_size
        self.first_stair_count = first_stair_count
        self.second_stair_count = first_stair_count if second_stair_count is None else second_stair_count
        self.decay_step_size = decay_step_size
        no_decay = math.isclose(decay_step_size, 0)
        self.skip_lr_decay = no_decay
        self.skip_mom_decay = no_decay

    def _supports_momentum(self) -> bool:
        if "betas" in self.optimizer.defaults:
            return True
        logger.warning(
            f"cycle_momentum is disabled because optimizer {type(self.optimizer).__name__} does not support "
            "momentum, no betas attribute in defaults"
        )
        return False

    def _get_scale_factor(self) -> float:
        """Position in the cycle: 0 at min lr, 1 at max lr (quantised when stairs are on)."""
        batch_iteration = self.last_batch_iteration + 1
        cycle = math.floor(1 + batch_iteration / self.total_size)
        x = 1.0 + batch_iteration / self.total_size - cycle
        if x <= self.step_ratio:
            scale_factor = x / self.step_ratio
            stair_count = self.first_stair_count
        else:
            scale_factor = (x - 1) / (self.step_ratio - 1)
            stair_count = self.second_stair_count
        if stair_count > 0:
            # From the integer offset, not the float scale, which can land 1e-16 under a stair.
            cycle_iteration = batch_iteration % self.total_size
            if cycle_iteration <= self.first_step_size:
                stair_position = cycle_iteration * stair_count / self.first_step_size
            else:
                stair_position = (self.total_size - cycle_iteration) * stair_count / self.second_step_size
            scale_factor = math.floor(stair_position) / stair_count
        return scale_factor

    def get_lr(self) -> list[float]:
        if self.last_batch_iteration < self.total_size:
            scale_factor = self._get_scale_factor()
            return [low + (high - low) * scale_factor for low, high in zip(self.min_lrs, self.max_lrs)]
        if self.skip_lr_decay:
            return self.min_lrs
        decay_interval = (self.last_batch_iteration - self.total_size + 1) / self.decay_step_size
        decay_factor = 1 + self.decay_lr_rate * decay_interval
        return [low / decay_factor for low in self.min_lrs]

    def get_mom(self) -> list[tuple[float, float]] | None:
        """(beta1, beta2) per group at the current batch, or None when momentum is not cycled."""
        if not self.cycle_momentum:
            return None
        if self.last_batch_iteration < self.total_size:
            scale_factor = self._get_scale_factor()
            return [
                (high[0] - (high[0] - low[0]) * scale_factor, low[1]) for low, high in zip(self.min_moms, self.max_moms)
            ]
        if self.skip_mom_decay:
            return self.max_moms
        decay_interval = (self.last_batch_iteration - self.total_size + 1) / self.decay_step_size
        decay_factor = 1 + self.decay_mom_rate * decay_interval
        return [(beta1 * decay_factor, beta2) for beta1, beta2 in self.max_moms]

    def step(self, batch_iteration: int | None = None) -> None:
        super().step(batch_iteration)
        if self.cycle_momentum:
            for group, betas in zip(self.optimizer.param_groups, self.get_mom()):
                group["betas"] = betas


class WarmupLR(_Schedule):
    """Warm the lr up from `warmup_min_lr` to `warmup_max_lr` (default: each group's lr) over
    `warmup_num_steps` batches, log(t + 1) / log(N) or t / N of the way, then hold it."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_min_lr: float = 0.0,
        warmup_max_lr: float | None = None,
        warmup_num_steps: int = 1000,
        warmup_type: str = WARMUP_LOG_RATE,
        last_batch_iteration: int = -1,
    ) -> None:
        self.warmup_num_steps = _checked_warmup_num_steps(warmup_num_steps)
        self.optimizer = get_torch_optimizer(optimizer)
        if warmup_max_lr is None:
            warmup_max_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.min_lrs = _per_group(self.optimizer, warmup_min_lr, "min_lr")
        self.max_lrs = _per_group(self.optimizer, warmup_max_lr, "max_lr")
        self.delta_lrs = [high - low for high, low in zip(self.max_lrs, self.min_lrs)]
        self.warmup_type = _checked_warmup_type(warmup_type)
        self.inverse_log_warm_up = 1.0 / math.log(self.warmup_num_steps)
        self.last_batch_iteration = last_batch_iteration
        if last_batch_iteration == -1:
            self._last_lr = update_lr(self.optimizer.param_groups, self.get_lr())

    def get_lr(self) -> list[float]:
        if self.last_batch_iteration < 0:  # before the first step: the warmup's start
            return self.min_lrs
        gamma = self._get_gamma()
        return [low + delta * gamma for low, delta in zip(self.min_lrs, self.delta_lrs)]

    def _get_gamma(self) -> float:
        if self.last_batch_iteration < self.warmup_num_steps:
            return _warmup_fraction(self.warmup_type, self.last_batch_iteration, self.warmup_num_steps)
        return 1.0


class WarmupDecayLR(WarmupLR):
    """WarmupLR, then linear decay: (total - t) / (total - warmup), reaching 0 at total_num_steps."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int,
        warmup_min_lr: float = 0.0,
        warmup_max_lr: float = 0.001,
        warmup_num_steps: int = 1000,
        warmup_type: str = WARMUP_LOG_RATE,
        last_batch_iteration: int = -1,
    ) -> None:
        self.total_num_steps = total_num_steps
        super().__init__(optimizer, warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type, last_batch_iteration)
        if self.total_num_steps < self.warmup_num_steps:
            logger.warning(f"total_num_steps {total_num_steps} is less than warmup_num_steps {warmup_num_steps}")

    def _get_gamma(self) -> float:
        if self.last_batch_iteration < self.warmup_num_steps:
            return _warmup_fraction(self.warmup_type, self.last_batch_iteration, self.warmup_num_steps)
        remaining = float(self.total_num_steps - self.last_batch_iteration)
        return max(0.0, remaining / float(max(1.0, self.total_num_steps - self.warmup_num_steps)))


class WarmupCosineLR(_Schedule):
    """Scale each group's own lr by a ratio: warmup_min_ratio -> 1 over the warmup (log or
    linear), then cosine down to cos_min_ratio, progress (t - warmup + 1) / (total - warmup)
    capped at 1. Before the first step the ratio is 0."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_num_steps: int,
        warmup_min_ratio: float = 0.0,
        warmup_num_steps: int = 1000,
        cos_min_ratio: float = 0.0001,
        warmup_type: str = WARMUP_LOG_RATE,
        last_batch_iteration: int = -1,
    ) -> None:
        self.warmup_num_steps = _checked_warmup_num_steps(warmup_num_steps)
        self.optimizer = get_torch_optimizer(optimizer)
        self.total_num_steps = total_num_steps
        self.last_batch_iteration = last_batch_iteration
        self.cos_min_ratio = cos_min_ratio
        self.warmup_type = _checked_warmup_type(warmup_type)
        self.warmup_min_ratio = warmup_min_ratio
        self.inverse_log_warm_up = 1.0 / math.log(self.warmup_num_steps)
        if self.total_num_steps < self.warmup_num_steps:
            logger.warning(f"total_num_steps {total_num_steps} is less than warmup_num_steps {warmup_num_steps}")
        self.org_lrs = [g["lr"].clone() if is_tensor(g["lr"]) else g["lr"] for g in self.optimizer.param_groups]
        if last_batch_iteration == -1:
            self._last_lr = update_lr(self.optimizer.param_groups, self.get_lr())

    def get_lr_ratio(self) -> float:
        t = self.last_batch_iteration
        if t < 0:
            return 0.0
        if t < self.warmup_num_steps:
            fraction = _warmup_fraction(self.warmup_type, t, self.warmup_num_steps)
            return self.warmup_min_ratio + fraction * (1.0 - self.warmup_min_ratio)
        progress = min(1.0, (t - self.warmup_num_steps + 1) / max(1, self.total_num_steps - self.warmup_num_steps))
        cosine = (1 + math.cos(math.pi * progress)) / 2
        return max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * cosine)

    def get_lr(self) -> list[Any]:
        if self.last_batch_iteration < 0:
            return [0.0 for _ in self.org_lrs]
        ratio = self.get_lr_ratio()
        return [org_lr * ratio for org_lr in self.org_lrs]
