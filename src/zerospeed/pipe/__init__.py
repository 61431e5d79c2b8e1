"""`zerospeed.pipe`: pipeline parallelism with DeepSpeed's names (`deepspeed.pipe`).

`PipelineModule` splits a list of layers over stages; `zerospeed.initialize(model=...)`
returns a `PipelineEngine` for it, trained with `engine.train_batch(data_iter)`.
"""

from zerospeed.pipe.module import LayerSpec, PipelineModule, TiedLayerSpec
from zerospeed.pipe.p2p import PipelineError
from zerospeed.pipe.topology import (
    PipeDataParallelTopology,
    PipelineParallelGrid,
    PipeModelDataParallelTopology,
    ProcessTopology,
)


def __getattr__(name: str):
    if name == "PipelineEngine":  # the engine pulls in the runtime; load it only when asked
        from zerospeed.pipe.engine import PipelineEngine

        return PipelineEngine
    raise AttributeError(f"module 'zerospeed.pipe' has no attribute {name!r}")


__all__ = [
    "LayerSpec", "PipeDataParallelTopology", "PipeModelDataParallelTopology", "PipelineEngine", "PipelineError",
    "PipelineModule", "PipelineParallelGrid", "ProcessTopology", "TiedLayerSpec",
]
