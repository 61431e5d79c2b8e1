"""The pipe × data (× model) process grid under DeepSpeed's names, built on comm.groups.

`ProcessTopology` is DeepSpeed's pure coordinate arithmetic (row-major over named axes).
`PipelineParallelGrid` is the `mpu` a pipeline engine hands to the Engine: its pipe, data
and tensor groups come from `zerospeed.comm.groups.build_grid` (one layout, one place);
the only group it adds is DeepSpeed's "model-parallel" group (every rank holding a
different part of the model for one data-parallel index), over which the gradient norm
and the parameter counts are summed.
"""

from __future__ import annotations

from collections import namedtuple
from itertools import product

from zerospeed import comm
from zerospeed.comm import groups
from zerospeed.errors import ConfigError


class ProcessTopology:
    """Map n-dimensional coordinates over named axes to ranks; the last axis varies fastest."""

    def __init__(self, axes: list[str], dims: list[int]) -> None:
        if len(axes) != len(dims) or len(set(axes)) != len(axes):
            raise ConfigError(f"ProcessTopology(axes={axes}, dims={dims}): need distinct axis names, one dim each")
        for axis, dim in zip(axes, dims):
            if not isinstance(dim, int) or dim < 1:
                raise ConfigError(f"ProcessTopology: axis {axis!r} has dim {dim!r}; allowed: an integer >= 1")
        self.axes = list(axes)
        self.dims = list(dims)
        self.ProcessCoord = namedtuple("ProcessCoord", axes)
        self.mapping = {self.ProcessCoord(*coord): rank for rank, coord in enumerate(product(*[range(d) for d in dims]))}
        self._coords = {rank: coord for coord, rank in self.mapping.items()}

    def get_rank(self, **coord_kwargs) -> int:
        if len(coord_kwargs) != len(self.axes):
            raise ValueError("get_rank() does not support slices. Use filter_match())")
        key = self.ProcessCoord(**coord_kwargs)
        if key not in self.mapping:
            raise ValueError(f"coordinate {coord_kwargs} is outside the topology {dict(zip(self.axes, self.dims))}")
        return self.mapping[key]

    def get_axis_names(self) -> list[str]:
        return self.axes

    def get_rank_repr(self, rank: int, omit_axes=("data", "pipe"), inner_sep: str = "_", outer_sep: str = "-") -> str:
        coord = self.get_coord(rank)
        return outer_sep.join(f"{ax}{inner_sep}{getattr(coord, ax):02d}" for ax in self.axes if ax not in set(omit_axes))

    def get_dim(self, axis: str) -> int:
        return self.dims[self.axes.index(axis)] if axis in self.axes else 0

    def get_coord(self, rank: int):
        if rank not in self._coords:
            raise ValueError(f"rank {rank} not found in topology.")
        return self._coords[rank]

    def get_axis_comm_lists(self, axis: str) -> list[list[int]]:
        """Rank lists whose coordinates agree on every axis except `axis`."""
        if axis not in self.axes:
            return []
        others = [a for a in self.axes if a != axis]
        lists = []
        for coord in product(*[range(self.get_dim(a)) for a in others]):
            fixed = dict(zip(others, coord))
            lists.append([self.mapping[self.ProcessCoord(**fixed, **{axis: i})] for i in range(self.get_dim(axis))])
        return lists

    def filter_match(self, **filter_kwargs) -> list[int]:
        return [rank for coord, rank in self.mapping.items() if all(getattr(coord, k) == v for k, v in filter_kwargs.items())]

    def get_axis_list(self, axis: str, idx: int) -> list[int]:
        position = self.axes.index(axis)
        return [rank for coord, rank in self.mapping.items() if coord[position] == idx]

    def world_size(self) -> int:
        return len(self.mapping)

    def __str__(self) -> str:
        return str(self.mapping)


class PipeDataParallelTopology(ProcessTopology):
    """Pipeline stages outermost, data-parallel ranks neighbours (DeepSpeed's layout)."""

    def __init__(self, num_pp: int, num_dp: int) -> None:
        super().__init__(axes=["pipe", "data"], dims=[num_pp, num_dp])


class PipeModelDataParallelTopology(ProcessTopology):
    """Pipe, then data, then model (tensor-slicing) ranks as neighbours."""

    def __init__(self, num_pp: int, num_mp: int, num_dp: int) -> None:
        super().__init__(axes=["pipe", "data", "model"], dims=[num_pp, num_dp, num_mp])


def _grid_shape(topology: ProcessTopology) -> tuple[int, int, int]:
    """(pp, dp, tp) of a topology laid out as comm.groups lays out its grid."""
    axes = topology.get_axis_names()
    if axes not in (["pipe", "data"], ["pipe", "data", "model"]):
        raise ConfigError(
            f"topology axes {axes} are not supported; allowed: ['pipe', 'data'] or ['pipe', 'data', 'model'] "
            "(PipeDataParallelTopology, PipeModelDataParallelTopology)"
        )
    return topology.get_dim("pipe"), topology.get_dim("data"), max(topology.get_dim("model"), 1)


class PipelineParallelGrid:
    """DeepSpeed's mpu for pipelines: this rank's stage, data index and the groups of each axis.

    A collective constructor: every rank builds it with the same topology.
    """

    def __init__(self, topology: ProcessTopology | None = None, process_group=None) -> None:
        self.global_rank = comm.get_rank()
        self.world_size = comm.get_world_size()
        if topology is None:
            topology = PipeDataParallelTopology(num_pp=self.world_size, num_dp=1)
        pp, dp, tp = _grid_shape(topology)
        if pp * dp * tp != self.world_size:
            raise ConfigError(
                f"topology pipe={pp} x data={dp} x model={tp} = {pp * dp * tp} ranks, but the world has {self.world_size}"
            )
        self._topo = topology
        self._grid = groups.build_grid(pp=pp, tp=tp)
        self.pipe_parallel_size, self.data_parallel_size = pp, dp
        self.model_parallel_size = self.slice_parallel_size = tp
        self.stage_id = self._grid.pp_rank
        self.data_parallel_id = self._grid.dp_rank
        self.is_first_stage = self._grid.is_first_stage
        self.is_last_stage = self._grid.is_last_stage
        self.pp_group = list(self._grid.pipe_ranks)
        self.dp_group = list(self._grid.data_ranks)
        self.slice_group = list(self._grid.tensor_ranks)
        # DeepSpeed's "model parallel" group: every stage and tensor slice of one data index.
        self.ds_model_proc_group = None
        for data_index in range(dp):
            ranks = sorted(topology.get_axis_list("data", data_index))
            group = comm.new_group(ranks)
            if self.global_rank in ranks:
                self.ds_model_proc_group, self.ds_model_ranks = group, ranks
        self.ds_model_world_size = len(self.ds_model_ranks)
        self.ds_model_rank = self.ds_model_ranks.index(self.global_rank)

    def get_stage_id(self) -> int:
        return self.stage_id

    def get_data_parallel_id(self) -> int:
        return self.data_parallel_id

    def stage_to_global(self, stage_id: int, **kwargs) -> int:
        """The global rank of `stage_id` at this rank's other coordinates (overridable by kwargs)."""
        me = self._topo.get_coord(self.global_rank)
        return self._topo.get_rank(**me._replace(pipe=stage_id, **kwargs)._asdict())

    def topology(self) -> ProcessTopology:
        return self._topo

    def get_global_rank(self) -> int:
        return self.global_rank

    def get_pipe_parallel_rank(self) -> int:
        return self.stage_id

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank

    def get_pipe_parallel_world_size(self) -> int:
        return self.pipe_parallel_size

    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size

    def get_pipe_parallel_group(self):
        return self._grid.pipe_group

    def get_data_parallel_rank(self) -> int:
        return self.data_parallel_id

    def get_data_parallel_world_size(self) -> int:
        return self.data_parallel_size

    def get_data_parallel_group(self):
        return self._grid.data_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.dp_group

    def get_model_parallel_rank(self) -> int:
        return self.ds_model_rank

    def get_model_parallel_world_size(self) -> int:
        return self.ds_model_world_size

    def get_model_parallel_group(self):
        return self.ds_model_proc_group

    def get_slice_parallel_rank(self) -> int:
        return self._grid.tp_rank

    get_tensor_model_parallel_rank = get_slice_parallel_rank

    def get_slice_parallel_world_size(self) -> int:
        return self.slice_parallel_size

    get_tensor_model_parallel_world_size = get_slice_parallel_world_size

    def get_slice_parallel_group(self):
        return self._grid.tensor_group

    get_tensor_model_parallel_group = get_slice_parallel_group
