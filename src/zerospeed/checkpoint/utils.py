"""DeepSpeed's `deepspeed.checkpoint.utils`: compact tensor copies for torch.save, DeepSpeed file names.

`clone_tensors_for_torch_save` matters whenever a tensor is a view into a larger buffer (every
parameter of a ZeRO flat bucket is one): torch.save pickles a view's whole storage, so saving one
small view of a bucket writes the bucket. Cloning first writes only the view's elements. The file
name helpers name the pieces of a *DeepSpeed* checkpoint (see `checkpoint.constants`).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import torch

from zerospeed.checkpoint.constants import MODEL_FILE_PREFIX, MODEL_FILE_SUFFIX, OPTIM_FILE_SUFFIX, ZERO_FILE_PREFIX


def clone_tensors_for_torch_save(item: Any, device: torch.device | str = torch.device("cpu")) -> Any:
    """A copy of `item` whose tensors (alone or nested in dicts, lists, tuples) are detached,
    compact copies on `device`; anything else is returned as is.

    A tensor already on `device` is cloned; one elsewhere is copied there (a copy is compact too).
    Containers keep their type (OrderedDict, defaultdict, namedtuple).
    """
    device = torch.device(device)
    if isinstance(item, torch.Tensor):
        detached = item.detach()
        return detached.clone() if detached.device == device else detached.to(device)
    if isinstance(item, list):
        return [clone_tensors_for_torch_save(value, device) for value in item]
    if isinstance(item, tuple):
        values = [clone_tensors_for_torch_save(value, device) for value in item]
        return type(item)(*values) if hasattr(item, "_fields") else type(item)(values)
    if isinstance(item, dict):
        cloned = {key: clone_tensors_for_torch_save(value, device) for key, value in item.items()}
        if isinstance(item, collections.defaultdict):
            return type(item)(item.default_factory, cloned)
        return type(item)(cloned)
    return item


def get_model_ckpt_name_for_rank(base_folder: str, mp_rank_str: str) -> str:
    """DeepSpeed's model-states file of a model-parallel rank (`mp_rank_00_model_states.pt`)."""
    return os.path.join(base_folder, f"{MODEL_FILE_PREFIX}{mp_rank_str}{MODEL_FILE_SUFFIX}")


def get_zero_ckpt_name_for_rank(base_folder: str, dp_rank: int, mp_rank: int) -> str:
    """DeepSpeed's ZeRO partition file (`zero_pp_rank_1_mp_rank_00_optim_states.pt`)."""
    return os.path.join(base_folder, f"{ZERO_FILE_PREFIX}{dp_rank}_{MODEL_FILE_PREFIX}{mp_rank:02d}{OPTIM_FILE_SUFFIX}")


def get_layer_ckpt_name_for_rank(base_folder: str, layer_id: str, tp_rank: int) -> str:
    """DeepSpeed's pipeline layer file (`layer_01-model_00_model_states.pt`)."""
    return os.path.join(base_folder, f"{layer_id}-model_{tp_rank:02d}{MODEL_FILE_SUFFIX}")


__all__ = [
    "clone_tensors_for_torch_save", "get_layer_ckpt_name_for_rank", "get_model_ckpt_name_for_rank",
    "get_zero_ckpt_name_for_rank",
]
