"""DeepSpeed's `deepspeed.runtime.pipe.schedule` path: the same module object as `zerospeed.pipe.schedule`.

Replacing itself in `sys.modules` makes both paths one module, so every name (and any
later patch of one) is seen through both; a re-exporting copy could drift.
"""

import sys

from zerospeed.pipe import schedule as _module

sys.modules[__name__] = _module
