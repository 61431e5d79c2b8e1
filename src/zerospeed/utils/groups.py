"""DeepSpeed's `deepspeed.utils.groups`: which process groups data, model and sequence parallelism use.

User code and Megatron-style libraries ask this module for "the data-parallel group" instead
of threading it through. The answer comes, in order, from the `mpu` the last engine was
given (`initialize(mpu=...)`, or a PipelineModule's grid), from the pipe x data x tensor
grid `zerospeed.comm.groups.build_grid` made, or else from the whole world.

Without an mpu or grid the data-parallel group is the world group object itself. DeepSpeed
hands out a clone of it (a `new_group` every rank must enter); torch now accepts the world
group everywhere a clone was needed, so no collective is hidden in a getter here.
"""

from __future__ import annotations

from typing import Any

from zerospeed import comm
from zerospeed.comm.groups import get_grid
from zerospeed.errors import CommError

mpu: Any = None  # set by the engine from initialize(mpu=...), DeepSpeed's `groups.mpu`

_tensor_parallel_world_size_override: int | None = None
_tensor_parallel_rank_override: int | None = None


def _require_initialized(what: str) -> None:
    if not comm.is_initialized():
        raise CommError(f"{what} needs the process group: call zerospeed.init_distributed() or zerospeed.initialize() first")


def _world_group():
    return comm.get_world_group()


def _grid():
    grid = get_grid()
    return grid if grid is not None and comm.is_initialized() else None


# -- data parallel --------------------------------------------------------------------------------
def _get_data_parallel_group():
    """The data-parallel group of this rank (mpu's, the grid's, or the world)."""
    _require_initialized("groups._get_data_parallel_group()")
    if mpu is not None:
        return mpu.get_data_parallel_group()
    grid = _grid()
    return grid.data_group if grid is not None else _world_group()


def _get_data_parallel_group_ranks() -> list[int]:
    _require_initialized("groups._get_data_parallel_group_ranks()")
    if mpu is not None and hasattr(mpu, "get_data_parallel_group_ranks"):
        return list(mpu.get_data_parallel_group_ranks())
    grid = _grid()
    return list(grid.data_ranks) if grid is not None else list(range(comm.get_world_size()))


def _get_data_parallel_world_size() -> int:
    _require_initialized("groups._get_data_parallel_world_size()")
    if mpu is not None and hasattr(mpu, "get_data_parallel_world_size"):
        return int(mpu.get_data_parallel_world_size())
    return comm.get_world_size(_get_data_parallel_group())


def _get_data_parallel_rank() -> int:
    _require_initialized("groups._get_data_parallel_rank()")
    if mpu is not None and hasattr(mpu, "get_data_parallel_rank"):
        return int(mpu.get_data_parallel_rank())
    return comm.get_rank(_get_data_parallel_group())


def _get_broadcast_src_rank() -> int:
    """Global rank of data-parallel rank 0 of this rank's group."""
    return _get_data_parallel_group_ranks()[0]


# -- model (tensor) parallel ------------------------------------------------------------------------
def _get_model_parallel_world_size() -> int:
    if mpu is not None and hasattr(mpu, "get_model_parallel_world_size"):
        return int(mpu.get_model_parallel_world_size())
    grid = _grid()
    return grid.tp if grid is not None else 1


def get_tensor_model_parallel_group():
    """The tensor-parallel group; there is one only with an mpu or a tensor-parallel grid."""
    if mpu is not None and hasattr(mpu, "get_tensor_model_parallel_group"):
        return mpu.get_tensor_model_parallel_group()
    if mpu is not None and hasattr(mpu, "get_model_parallel_group"):
        return mpu.get_model_parallel_group()
    grid = _grid()
    if grid is not None:
        return grid.tensor_group
    raise CommError("no tensor-parallel group exists: zerospeed has one only when initialize() gets an mpu "
                    "or a pipeline/tensor grid was built (PipelineModule with a topology)")


get_model_parallel_group = get_tensor_model_parallel_group


def get_tensor_model_parallel_world_size() -> int:
    if _tensor_parallel_world_size_override is not None:
        return _tensor_parallel_world_size_override
    return _get_model_parallel_world_size()


get_model_parallel_world_size = get_tensor_model_parallel_world_size


def get_tensor_model_parallel_rank() -> int:
    if _tensor_parallel_rank_override is not None:
        return _tensor_parallel_rank_override
    if mpu is not None and hasattr(mpu, "get_model_parallel_rank"):
        return int(mpu.get_model_parallel_rank())
    grid = _grid()
    return grid.tp_rank if grid is not None else 0


get_model_parallel_rank = get_tensor_model_parallel_rank


def set_tensor_model_parallel_world_size(world_size: int) -> None:
    global _tensor_parallel_world_size_override
    _tensor_parallel_world_size_override = world_size


def set_tensor_model_parallel_rank(rank: int) -> None:
    global _tensor_parallel_rank_override
    _tensor_parallel_rank_override = rank


def get_tensor_model_parallel_src_rank() -> int:
    """Global rank of tensor-parallel rank 0 in this rank's group (tensor ranks are neighbours)."""
    size = get_tensor_model_parallel_world_size()
    return (comm.get_rank() // size) * size


def get_data_parallel_group():
    return _get_data_parallel_group()


def get_data_parallel_world_size() -> int:
    return _get_data_parallel_world_size()


def get_data_parallel_rank() -> int:
    return _get_data_parallel_rank()


# -- sequence parallel (only through an mpu that defines it) ------------------------------------------
def _get_sequence_parallel_world_size() -> int:
    if mpu is not None and hasattr(mpu, "get_sequence_parallel_world_size"):
        return int(mpu.get_sequence_parallel_world_size())
    return 1


def _get_sequence_parallel_rank() -> int:
    if mpu is not None and hasattr(mpu, "get_sequence_parallel_rank"):
        return int(mpu.get_sequence_parallel_rank())
    return 0


def _get_sequence_parallel_group():
    if mpu is not None and hasattr(mpu, "get_sequence_parallel_group"):
        return mpu.get_sequence_parallel_group()
    raise KeyError("No sequence parallel group found")  # DeepSpeed's exception and message


def _get_sequence_data_parallel_world_size() -> int:
    if mpu is not None and hasattr(mpu, "get_sequence_data_parallel_world_size"):
        return int(mpu.get_sequence_data_parallel_world_size())
    return _get_data_parallel_world_size()


def _get_sequence_data_parallel_rank() -> int:
    if mpu is not None and hasattr(mpu, "get_sequence_data_parallel_rank"):
        return int(mpu.get_sequence_data_parallel_rank())
    return _get_data_parallel_rank()


def _get_sequence_data_parallel_group():
    if mpu is not None and hasattr(mpu, "get_sequence_data_parallel_group"):
        return mpu.get_sequence_data_parallel_group()
    return _get_data_parallel_group()


def __getattr__(name: str):
    from zerospeed.runtime.unsupported import NotProvidedError, attribute_error

    if "expert" in name:  # _get_expert_parallel_group, _create_expert_and_data_parallel, ...
        feature = "Mixture of Experts (deepspeed.moe) and its expert-parallel groups"
        raise NotProvidedError(f"zerospeed does not provide {feature}: `deepspeed.utils.groups.{name}` has no "
                               "zerospeed counterpart", feature)
    raise attribute_error("zerospeed.utils.groups", name)
