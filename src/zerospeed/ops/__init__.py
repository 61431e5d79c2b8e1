"""DeepSpeed's `deepspeed.ops` optimizer classes, written over torch: no compile step.

`from deepspeed.ops.adam import FusedAdam, DeepSpeedCPUAdam`, `deepspeed.ops.lamb.FusedLamb`,
`deepspeed.ops.lion.FusedLion` / `DeepSpeedCPULion` and `deepspeed.ops.adagrad.DeepSpeedCPUAdagrad`
work unchanged under `import zerospeed as deepspeed`.
"""

from zerospeed.ops import adagrad, adam, lamb, lion
from zerospeed.ops.adagrad import DeepSpeedCPUAdagrad
from zerospeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from zerospeed.ops.lamb import FusedLamb
from zerospeed.ops.lion import DeepSpeedCPULion, FusedLion

__all__ = [
    "adagrad",
    "adam",
    "lamb",
    "lion",
    "DeepSpeedCPUAdagrad",
    "DeepSpeedCPUAdam",
    "FusedAdam",
    "FusedLamb",
    "DeepSpeedCPULion",
    "FusedLion",
]
