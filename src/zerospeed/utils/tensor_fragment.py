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
    """Swap NVMe-offloaded masters and states in while they are read or written (after an async
    checkpoint still copying them in the background is done with them)."""
    if hasattr(optimizer, "wait_for_readers"):
        optimizer.wait_for_readers()
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
        full = _assemble(optimizer, param, _grad_picker(optimizer, param))
    return None if full is None else full / scale


def _grad_picker(optimizer, param):
    """How to read a piece's reduced gradient. At stage 3 it is the reducer's partition: an
    offloaded master's `.grad` receives it only inside step(), so before that it is stale."""
    if getattr(param, "_zs_unit", None) is not None and hasattr(optimizer, "coordinator"):
        slot = _local_slot(param)
        if slot is not None:
            _, master, index, master_index = slot
            offset, _, real = _chunk_bounds(master, index)
            reduced = optimizer.reducer.grad_view(master_index)[offset : offset + real]
            return lambda piece: reduced
    return lambda piece: piece.grad if piece.grad is not None else piece.tensor.grad


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


# -- ZeRO-3 local partitions ------------------------------------------------------------------------
# DeepSpeed's safe_get_local_* / safe_set_local_* read and write this rank's partition of a
# stage-3 parameter only: `ds_tensor.numel()` elements (ceil(numel / world), zero-padded on the
# last ranks), no collective, so a rank may call them alone. Here the partition is the
# parameter's chunk of its unit's fp32 master; the optimizer state exists for the chunk's real
# elements (its piece), padding reads as zeros and writes to it are dropped.


def _local_slot(param: torch.nn.Parameter):
    """(optimizer, master, member index, master index) of a stage-3 parameter, or None if frozen."""
    if not hasattr(param, "ds_id") or getattr(param, "_zs_unit", None) is None:
        raise EngineError(
            "safe_get_local_* / safe_set_local_* are defined only for ZeRO stage 3 partitioned parameters "
            "(as in DeepSpeed); at stages 0-2 use safe_get_full_* / safe_set_full_*"
        )
    if not param.requires_grad:
        return None
    optimizer, _ = _owner(param)
    unit = param._zs_unit
    index = next(i for i, member in enumerate(unit.params) if member is param)
    for master_index, master in enumerate(optimizer.masters):
        if master.unit is unit:
            return optimizer, master, index, master_index
    raise EngineError(f"{unit.describe(index)} has no optimizer partition on this rank")


def _chunk_bounds(master, index: int) -> tuple[int, int, int]:
    """(offset of the chunk in the master, chunk elements, real elements) of member `index`."""
    layout = master.unit.layout
    start, end = layout.logical_range(index, master.unit.rank)
    return layout.offsets[index], layout.chunks[index], end - start


def _piece_of(master, index: int) -> torch.Tensor | None:
    for member, piece in zip(master.members, master.pieces):
        if member == index:
            return piece
    return None


def _check_local_value(param, value: torch.Tensor) -> torch.Tensor:
    flat = value.detach().reshape(-1)
    expected = param.ds_tensor.numel()
    if flat.numel() != expected:
        raise EngineError(
            f"local value has {flat.numel()} elements but this rank's partition of the parameter has {expected} "
            f"(ds_tensor.numel(), ceil({param.ds_numel} / world size))"
        )
    return flat


def safe_get_local_fp32_param(param: torch.nn.Parameter) -> torch.Tensor | None:
    """This rank's fp32 partition of a stage-3 parameter (a copy, `ds_tensor.numel()` elements)."""
    slot = _local_slot(param)
    if slot is None:
        return None
    optimizer, master, index, _ = slot
    offset, chunk, _ = _chunk_bounds(master, index)
    with _in_memory(optimizer):
        return master.weights[offset : offset + chunk].detach().float().clone()


def safe_get_local_optimizer_state(param: torch.nn.Parameter, optim_state_key: str) -> torch.Tensor | None:
    """This rank's partition of optimizer state `optim_state_key`; None before the first step."""
    slot = _local_slot(param)
    if slot is None:
        return None
    optimizer, master, index, _ = slot
    _, chunk, real = _chunk_bounds(master, index)
    with _in_memory(optimizer):
        piece = _piece_of(master, index)
        state = optimizer.optimizer.state.get(piece, {}).get(optim_state_key) if piece is not None else None
        if piece is not None and state is None:
            return None
        local = torch.zeros(chunk, dtype=torch.float32, device=master.weights.device)
        if state is not None:
            local[:real] = state.detach().reshape(-1).float()
        return local


def safe_get_local_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    """This rank's partition of the reduced, unscaled fp32 gradient (after backward, before step)."""
    slot = _local_slot(param)
    if slot is None:
        return None
    optimizer, master, index, master_index = slot
    offset, chunk, _ = _chunk_bounds(master, index)
    reduced = optimizer.reducer.grad_view(master_index)  # the reducer's partition: read before step() consumes it
    return reduced[offset : offset + chunk].detach().float() / optimizer.loss_scaler.cur_scale


def safe_set_local_fp32_param(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Overwrite this rank's fp32 partition (and its working shard); padding elements are ignored.

    Like DeepSpeed's, only this rank's partition changes and no collective runs; a copy of the
    parameter that is gathered right now (persistent or held) shows the value after the next step.
    """
    slot = _local_slot(param)
    if slot is None:
        return
    optimizer, master, index, _ = slot
    flat = _check_local_value(param, value)
    offset, _, real = _chunk_bounds(master, index)
    with _in_memory(optimizer):
        master.weights[offset : offset + real].copy_(flat[:real].to(master.weights.device))
        master.write_back()


def safe_set_local_optimizer_state(param: torch.nn.Parameter, value: torch.Tensor, optim_state_key: str) -> None:
    """Overwrite this rank's partition of optimizer state `optim_state_key` (after the first step)."""
    slot = _local_slot(param)
    if slot is None:
        return
    optimizer, master, index, _ = slot
    flat = _check_local_value(param, value)
    _, _, real = _chunk_bounds(master, index)
    with _in_memory(optimizer):
        piece = _piece_of(master, index)
        if piece is None:
            return  # this rank holds only padding of the parameter: nothing to store
        state = optimizer.optimizer.state.get(piece, {})
        if optim_state_key not in state:
            raise EngineError(f"optimizer state {optim_state_key!r} does not exist yet (it is created by the first step); "
                              f"present: {sorted(state)}")
        state[optim_state_key].copy_(flat[:real].to(state[optim_state_key].device).view_as(state[optim_state_key]))


def safe_set_local_grad(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    """Overwrite this rank's partition of the reduced gradient (unscaled fp32 values), before step()."""
    slot = _local_slot(param)
    if slot is None:
        return
    optimizer, master, index, master_index = slot
    flat = _check_local_value(param, value)
    offset, _, real = _chunk_bounds(master, index)
    reduced = optimizer.reducer.grad_view(master_index)
    scaled = flat[:real].float() * optimizer.loss_scaler.cur_scale  # the reducer holds loss-scaled gradients
    reduced[offset : offset + real].copy_(scaled.to(reduced.device, reduced.dtype))
