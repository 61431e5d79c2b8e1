"""Read and edit full fp32 parameters, gradients and optimizer states under any ZeRO stage.

DeepSpeed documents these `safe_*` helpers for code that inspects or edits ZeRO state.
They work on the engine optimizer's `logical_pieces()`: each rank fills the elements it
owns and a sum over the data-parallel group assembles the whole tensor (pieces are
disjoint across ranks when partitioned). Like DeepSpeed's, every rank must call them.
"""

from __future__ import annotations

import contextlib

import torch

from zerospeed import comm
from zerospeed.errors import EngineError


def _owner(param: torch.nn.Parameter):
    optimizer = getattr(param, "_zs_optimizer", None)
    if optimizer is None:
        raise EngineError(
            "this parameter is not managed by a zerospeed engine optimizer (frozen, or not passed to initialize())"
        )
    return optimizer, param._zs_name


def _pieces(param):
    optimizer, name = _owner(param)
    return optimizer, [piece for piece in optimizer.logical_pieces() if piece.name == name]


def _in_memory(optimizer):
    """Swap NVMe-offloaded masters and states in while they are read or written."""
    return optimizer.materialized() if hasattr(optimizer, "materialized") else contextlib.nullcontext()


def _shape(param) -> tuple[int, ...]:
    return tuple(getattr(param, "ds_shape", param.shape))


def _assemble(optimizer, param, pick) -> torch.Tensor | None:
    shape = _shape(param)
    full = torch.zeros(_numel(param), dtype=torch.float32)
    found = False
    for piece in _pieces(param)[1]:
        value = pick(piece)
        if value is not None:
            full[piece.start : piece.end] = value.detach().float().cpu()
            found = True
    if getattr(optimizer, "stage", 0) >= 1:
        group = getattr(optimizer, "dp_group", None)
        flag = torch.tensor([1.0 if found else 0.0])
        if comm.get_world_size(group) > 1:
            comm.all_reduce(full, group=group)
            comm.all_reduce(flag, group=group)
        found = bool(flag.item())
    return full.view(shape) if found else None


def safe_get_full_fp32_param(param: torch.nn.Parameter) -> torch.Tensor:
    """The whole fp32 master value of `param` on every rank."""
    optimizer, _ = _owner(param)
    with _in_memory(optimizer):
        return _assemble(optimizer, param, lambda piece: piece.tensor)


def safe_get_full_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    """The whole reduced, unscaled fp32 gradient of `param` (after backward, before step)."""
    optimizer, _ = _owner(param)
    scale = optimizer.loss_scaler.cur_scale
    with _in_memory(optimizer):
        full = _assemble(optimizer, param, lambda piece: piece.grad if piece.grad is not None else piece.tensor.grad)
    return None if full is None else full / scale


def safe_get_full_optimizer_state(param: torch.nn.Parameter, optim_state_key: str) -> torch.Tensor | None:
    """The whole optimizer state `optim_state_key` (e.g. "exp_avg") of `param`."""
    optimizer, _ = _owner(param)
    with _in_memory(optimizer):
        state = optimizer.optimizer.state
        return _assemble(optimizer, param, lambda piece: state.get(piece.tensor, {}).get(optim_state_key))


def _scatter(param, value: torch.Tensor, target) -> None:
    optimizer, pieces = _pieces(param)
    flat = value.detach().reshape(-1).float()
    if flat.numel() != _numel(param):
        raise EngineError(f"value of shape {tuple(value.shape)} does not match parameter shape {_shape(param)}")
    for piece in pieces:
        destination = target(piece)
        destination.copy_(flat[piece.start : piece.end].to(destination.device))
    return optimizer


def _numel(param) -> int:
    numel = 1
    for size in _shape(param):
        numel *= size
    return numel


def safe_set_full_fp32_param(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Overwrite the fp32 master of `param` (and the model's working copy) on every rank."""
    optimizer, _ = _owner(param)
    with _in_memory(optimizer):
        _scatter(param, value, lambda piece: piece.tensor)
        optimizer.sync_working_from_master()


def safe_set_full_optimizer_state(param: torch.nn.Parameter, value: torch.Tensor, optim_state_key: str) -> None:
    """Overwrite optimizer state `optim_state_key` of `param` with the full `value`."""
    optimizer, _ = _owner(param)
    with _in_memory(optimizer):
        state = optimizer.optimizer.state
        _scatter(param, value, lambda piece: state[piece.tensor][optim_state_key])
