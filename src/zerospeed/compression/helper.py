"""DeepSpeed's `deepspeed.compression.helper` path: the two module-path helpers scripts import from it.

They live in `zerospeed.utils.module_utils`, as DeepSpeed 0.19.8 keeps them in
`deepspeed.utils.module_utils`; this path stays so those imports keep working.
"""

from zerospeed.utils.module_utils import recursive_getattr, recursive_setattr

__all__ = ["recursive_getattr", "recursive_setattr"]
