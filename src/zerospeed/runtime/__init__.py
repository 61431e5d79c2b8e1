"""The training runtime: engine, precision, optimizers, schedulers, data, timers.

Submodules load on first attribute access, so DeepSpeed-style attribute paths such as
`zerospeed.runtime.zero.partition_parameters.ZeroParamStatus` work after a bare
`import zerospeed`, as `deepspeed.runtime...` paths do after `import deepspeed`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from zerospeed.runtime.unsupported import submodule_attribute

    return submodule_attribute("zerospeed.runtime", name)
