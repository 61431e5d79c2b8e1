"""pipeline: pipeline-parallel engine options (DeepSpeed runtime/config.py defaults)."""

from __future__ import annotations

from typing import Union

from pydantic import BeforeValidator
from typing_extensions import Annotated

from ._base import AUTO_OK, Bool, ConfigModel, Int, OptBool


def _stages(value: object) -> object:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected 'auto' or an integer >= 1")
    return value


Stages = Annotated[Union[int, str], BeforeValidator(_stages), AUTO_OK]


class PipelineConfig(ConfigModel):
    section = "pipeline"
    stages: Stages = "auto"
    # "parameters", "uniform", "type:<regex>" or DeepSpeed's default "best"
    partition: str = "best"
    seed_layers: Bool = False
    activation_checkpoint_interval: Int(ge=0) = 0
    pipe_partitioned: Bool = True
    grad_partitioned: Bool = True
    use_reentrant: OptBool = None  # None: the module's checkpoint function decides (DeepSpeed: True)
