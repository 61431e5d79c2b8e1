"""activation_checkpointing: DeepSpeed's checkpointing.checkpoint() options."""

from __future__ import annotations

from ._base import Bool, ConfigModel, Int


class ActivationCheckpointingConfig(ConfigModel):
    section = "activation_checkpointing"
    partition_activations: Bool = False
    number_checkpoints: Int(optional=True, ge=1) = None
    contiguous_memory_optimization: Bool = False
    synchronize_checkpoint_boundary: Bool = False
    profile: Bool = False
    cpu_checkpointing: Bool = False
