"""aio: asynchronous file I/O used by NVMe offload (DeepSpeed swap_tensor/constants.py).

`thread_count` is the name older DeepSpeed docs used for intra_op_parallelism.
"""

from __future__ import annotations

from ._base import Bool, ConfigModel, Int


class AioConfig(ConfigModel):
    section = "aio"
    aliases = {"thread_count": "intra_op_parallelism"}
    deprecated = {"thread_count": ""}
    block_size: Int(gt=0) = 1_048_576
    queue_depth: Int(gt=0) = 8
    intra_op_parallelism: Int(gt=0) = 1
    single_submit: Bool = False
    overlap_events: Bool = True
    use_gds: Bool = False
