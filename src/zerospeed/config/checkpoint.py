"""checkpoint: tag validation, universal loading and writer options (DeepSpeed defaults).

Modes are stored upper-case, as DeepSpeed compares them ("WARN" | "IGNORE" | "FAIL").
"""

from __future__ import annotations

from typing import Optional

from ._base import Bool, Choice, ConfigModel, Int


class ParallelWriteConfig(ConfigModel):
    section = "checkpoint.parallel_write"
    pipeline_stage: Bool = False


class CheckpointWriterConfig(ConfigModel):
    section = "checkpoint.writer"
    type: Choice("MOCK", "PYTHON", "FAST", case="upper") = "FAST"
    io_buffer_size: Int(gt=0) = 64 * 1024**2
    io_buffer_double: Bool = True
    show_statistics: Bool = False
    data_parallel: Choice("REPLICA", "SOCKET", "MACHINE", optional=True, case="upper") = None
    decoupled: Bool = False
    io_multiplier: Int(ge=1) = 1


class CheckpointConfig(ConfigModel):
    section = "checkpoint"
    tag_validation: Choice("WARN", "IGNORE", "FAIL", case="upper") = "WARN"
    load_universal: Bool = False
    use_node_local_storage: Bool = False
    parallel_write: ParallelWriteConfig = ParallelWriteConfig()
    checkpoint_serialization: Bool = True
    writer: Optional[CheckpointWriterConfig] = None

    @property
    def tag_validation_enabled(self) -> bool:
        return self.tag_validation != "IGNORE"

    @property
    def tag_validation_fail(self) -> bool:
        return self.tag_validation == "FAIL"
