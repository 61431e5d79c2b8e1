"""DeepSpeed's `deepspeed.runtime.activation_checkpointing.checkpointing`: the same module as `zerospeed.checkpointing`.

The module replaces itself in `sys.modules` with `zerospeed.checkpointing`, so both import
paths share one module object and its state (`configure()` options, the RNG tracker, `mpu`);
a re-exporting copy would freeze that state at import time.
"""

import sys

from zerospeed import checkpointing as _checkpointing

sys.modules[__name__] = _checkpointing
