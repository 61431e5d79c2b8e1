"""DeepSpeed's `deepspeed.runtime.pipe` path over `zerospeed.pipe`.

`module`, `topology`, `engine` and `schedule` are `zerospeed.pipe`'s own modules (each file
here aliases one in `sys.modules`); the package re-exports the names DeepSpeed's does.
"""

from zerospeed.pipe import (
    LayerSpec,
    PipeDataParallelTopology,
    PipelineModule,
    PipeModelDataParallelTopology,
    ProcessTopology,
    TiedLayerSpec,
)


def __getattr__(name: str):
    from zerospeed.runtime.unsupported import submodule_attribute

    if name == "PipelineEngine":
        from zerospeed.pipe.engine import PipelineEngine

        return PipelineEngine
    return submodule_attribute("zerospeed.runtime.pipe", name)


__all__ = [
    "LayerSpec", "PipeDataParallelTopology", "PipeModelDataParallelTopology", "PipelineEngine", "PipelineModule",
    "ProcessTopology", "TiedLayerSpec",
]
