"""DeepSpeed's `deepspeed.runtime.pipe.module` path: the same module object as `zerospeed.pipe.module`.

Replacing itself in `sys.modules` makes both paths one module, so every name (and any
later patch of one) is seen through both; a re-exporting copy could drift.
"""

import sys

from zerospeed.pipe import module as _module

sys.modules[__name__] = _module
