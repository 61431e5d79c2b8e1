"""DeepSpeed's `zero_to_fp32` API over zerospeed checkpoints: consolidated weights, offline, one process.

    from zerospeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state_dict = get_fp32_state_dict_from_zero_checkpoint("checkpoints")   # tag from 'latest'

Works for checkpoints of any world size and ZeRO stage; tensors are built one at a time.
The command line equivalent is `zerospeed consolidate CKPT_DIR OUT [--safetensors]`.
"""

from __future__ import annotations

import torch

from zerospeed.checkpoint import deepspeed_format
from zerospeed.checkpoint.consolidate import export, iter_consolidated


def get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=None, exclude_frozen_parameters=False,
                                             lazy_mode=False) -> dict[str, torch.Tensor]:
    """Full fp32 state dict (parameters and buffers) of the checkpoint in `checkpoint_dir`.

    `lazy_mode` is accepted for DeepSpeed compatibility; tensors are always real (use
    `zerospeed.checkpoint.consolidate.iter_consolidated` to stream them instead). A directory
    DeepSpeed wrote (no zerospeed manifest in the tag) is read by `checkpoint.deepspeed_format`.
    """
    if deepspeed_format.find_checkpoint(checkpoint_dir, tag) is not None:
        return deepspeed_format.fp32_state_dict(checkpoint_dir, tag, exclude_frozen_parameters)
    return dict(iter_consolidated(checkpoint_dir, tag, exclude_frozen_parameters))


def convert_zero_checkpoint_to_state_dict(checkpoint_dir, output_dir, dtype=torch.float32, max_shard_size="5GB",
                                          safe_serialization=False, tag=None, exclude_frozen_parameters=False):
    """Write consolidated weights into `output_dir` (`model.safetensors` or `pytorch_model.bin`, sharded
    with an index above `max_shard_size`); float tensors are cast to `dtype`. Returns the files written."""
    return export(checkpoint_dir, str(output_dir), tag=tag, dtype=dtype, safe_serialization=safe_serialization,
                  max_shard_size=max_shard_size, exclude_frozen_parameters=exclude_frozen_parameters)


def convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, output_dir, max_shard_size="5GB",
                                               safe_serialization=False, tag=None, exclude_frozen_parameters=False):
    return convert_zero_checkpoint_to_state_dict(checkpoint_dir, output_dir, torch.float32, max_shard_size,
                                                 safe_serialization, tag, exclude_frozen_parameters)


def load_state_dict_from_zero_checkpoint(model: torch.nn.Module, checkpoint_dir, tag=None) -> torch.nn.Module:
    """Move `model` to CPU, load the consolidated fp32 weights into it, and return it."""
    model = model.cpu()
    model.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag), strict=False)
    return model
