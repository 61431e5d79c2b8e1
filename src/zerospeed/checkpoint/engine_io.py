"""The engine's checkpoint methods (DeepSpeed's signatures); `Engine` delegates here in one line each."""

from __future__ import annotations

import contextlib
import os

import torch

from zerospeed import comm
from zerospeed.checkpoint import loader, saver
from zerospeed.checkpoint.files import write_safetensors
from zerospeed.checkpoint.state import gathered_module, rank0_module_tensors
from zerospeed.utils.logging import log_dist


def save_checkpoint(engine, save_dir, tag=None, client_state=None, save_latest=True,
                    exclude_frozen_parameters=False, async_save=False) -> bool:
    """Write model, optimizer pieces, scheduler, scaler, counters, RNG and client_state; every rank calls.

    `async_save=True` returns after snapshotting tensors to CPU; writing and committing run in
    a background thread that the next save, `engine.wait_for_checkpoint()` or exit waits for.
    """
    with _optimizer_in_memory(engine):  # the snapshot reads every master and state; async writes use copies
        saver.save(engine, os.fspath(save_dir), tag, client_state, save_latest, exclude_frozen_parameters, async_save)
    return True


def _optimizer_in_memory(engine):
    """Masters and optimizer states swapped in from NVMe for the duration (a no-op otherwise)."""
    optimizer = getattr(engine, "optimizer", None)
    return optimizer.materialized() if hasattr(optimizer, "materialized") else contextlib.nullcontext()


def load_checkpoint(engine, load_dir, tag=None, load_module_strict=True, load_optimizer_states=True,
                    load_lr_scheduler_states=True, load_module_only=False, custom_load_fn=None):
    """Returns `(checkpoint path, client_state)`, or `(None, None)` when `load_dir` holds no checkpoint.

    Reads zerospeed's format, and DeepSpeed's (`latest` + `<tag>/mp_rank_00_model_states.pt`, ZeRO
    optimizer files) when the tag directory has no zerospeed manifest: see docs/deepspeed-checkpoints.md.
    """
    from zerospeed.checkpoint import deepspeed_format, deepspeed_load

    options = loader.Options(load_module_strict, load_optimizer_states, load_lr_scheduler_states,
                             load_module_only, custom_load_fn)
    deepspeed_tag_dir = deepspeed_format.find_checkpoint(os.fspath(load_dir), tag)
    with _optimizer_in_memory(engine):  # what the load writes is swapped back out on exit
        if deepspeed_tag_dir is not None:
            return deepspeed_load.load(engine, deepspeed_tag_dir, options)
        return loader.load(engine, os.fspath(load_dir), tag, options)


def wait_for_checkpoint(engine) -> None:
    saver.wait_for_pending(engine)


def module_state_dict(engine, destination=None, prefix="", keep_vars=False, exclude_frozen_parameters=False) -> dict:
    """The module's state dict (whole parameters even at stage 3, so never a 0-element placeholder)."""
    with gathered_module(engine.module):
        state = engine.module.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if any(hasattr(p, "ds_tensor") for p in engine.module.parameters()):
            state = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    if exclude_frozen_parameters:
        for name, param in engine.module.named_parameters():
            if not param.requires_grad:
                state.pop(prefix + name, None)
    return state


def save_16bit_model(engine, save_dir, save_filename="pytorch_model.bin", exclude_frozen_parameters=False) -> bool:
    """Rank 0 writes the module's weights in the model dtype (safetensors if the name ends so); every rank calls."""
    excluded = {n for n, p in engine.module.named_parameters() if not p.requires_grad} if exclude_frozen_parameters else set()
    module = rank0_module_tensors(engine.module, exclude=excluded, clone=True)  # a collective at stage 3
    if comm.get_rank() == 0:
        tensors, _, ties = module
        tensors.update({name: tensors[first] for name, first in ties.items()})
        os.makedirs(save_dir, exist_ok=True)
        path = os.path.join(save_dir, save_filename)
        temp = path + ".tmp"
        if save_filename.endswith(".safetensors"):
            write_safetensors(temp, tensors, {"format": "pt"})
        else:
            torch.save(tensors, temp)
        os.replace(temp, path)
        log_dist(f"saved 16-bit model weights to {path}")
    if comm.get_world_size() > 1:
        comm.barrier()
    return True
