"""The batch triple: train_batch_size = micro batch per GPU x accumulation steps x DP world size.

Any two (or, following DeepSpeed, one) of the three determine the rest; inconsistent
values fail with the three numbers and the equation instead of DeepSpeed's bare assert.
"""

from __future__ import annotations

from typing import Optional

from zerospeed.errors import ConfigError

TBS, MICRO, GAS = "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"


def _equation(tbs: int, micro: int, gas: int, world_size: int) -> str:
    return (f"{TBS} ({tbs}) must equal {MICRO} ({micro}) x {GAS} ({gas}) x data-parallel world size "
            f"({world_size}) = {micro * gas * world_size}")


def complete_batch(tbs: Optional[int], micro: Optional[int], gas: Optional[int],
                   world_size: int) -> tuple[int, int, int]:
    """Fill the missing members of (tbs, micro, gas) with DeepSpeed's rules, then check them.

    Rules (DeepSpeed runtime/config.py `_set_batch_related_parameters`):
    tbs+micro -> gas = tbs // micro // world; tbs+gas -> micro = tbs // world // gas;
    micro+gas -> tbs; tbs alone -> gas = 1, micro = tbs // world; micro alone -> gas = 1.
    """
    if world_size < 1:
        raise ConfigError(f"data-parallel world size = {world_size}: must be >= 1")
    given = {TBS: tbs, MICRO: micro, GAS: gas}
    derived = [name for name, value in given.items() if value is None]
    if tbs is None and micro is None:
        raise ConfigError(f"batch size missing: give {TBS} or {MICRO} (or both); "
                          f"{TBS} = {MICRO} x {GAS} x data-parallel world size")
    if tbs is not None and micro is not None and gas is None:
        gas = tbs // micro // world_size
    elif tbs is not None and gas is not None and micro is None:
        micro = tbs // world_size // gas
    elif micro is not None and gas is not None and tbs is None:
        tbs = micro * gas * world_size
    elif tbs is not None and micro is None and gas is None:
        gas, micro = 1, tbs // world_size
    elif micro is not None and tbs is None and gas is None:
        gas, tbs = 1, micro * world_size
    for name, value in ((TBS, tbs), (MICRO, micro), (GAS, gas)):
        if value < 1:
            how = "derived" if name in derived else "given"
            raise ConfigError(f"{name} = {value} ({how}): must be >= 1; {_equation(tbs, micro, gas, world_size)}")
    if tbs != micro * gas * world_size:
        note = f" ({', '.join(derived)} derived)" if derived else ""
        raise ConfigError(f"inconsistent batch sizes{note}: {_equation(tbs, micro, gas, world_size)}")
    return tbs, micro, gas


def check_divisible(tbs: int, micro: int, gas: int) -> None:
    """Without a world size, all three given must still imply a whole number of ranks."""
    if tbs % (micro * gas) != 0:
        raise ConfigError(
            f"inconsistent batch sizes: {TBS} ({tbs}) must equal {MICRO} ({micro}) x {GAS} ({gas}) x "
            f"data-parallel world size, but {tbs} is not a multiple of {micro * gas}")
