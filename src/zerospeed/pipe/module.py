"""`PipelineModule`: a sequence of layers split over pipeline stages (DeepSpeed's API).

Each rank builds only its own stage's layers. `LayerSpec` defers construction so the
others are never allocated; `TiedLayerSpec` names a module shared by several stages
(an embedding reused as the LM head): each stage that holds it builds a copy, the copies
start from the first holder's weights and their gradients are summed over the holders
before the data-parallel reduction.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Callable

import torch
from torch import nn

from zerospeed import comm
from zerospeed.errors import ConfigError
from zerospeed.pipe.p2p import PipelineError
from zerospeed.pipe.topology import PipeDataParallelTopology, PipelineParallelGrid, ProcessTopology
from zerospeed.utils.logging import log_dist


class LayerSpec:
    """A layer to build later: `typename(*module_args, **module_kwargs)`."""

    def __init__(self, typename, *module_args, **module_kwargs) -> None:
        if not (isinstance(typename, type) and issubclass(typename, nn.Module)):
            raise ConfigError(f"LayerSpec({typename!r}, ...): the first argument must be a torch.nn.Module subclass")
        self.typename = typename
        self.module_args = module_args
        self.module_kwargs = module_kwargs
        self.global_rank = comm.get_rank() if comm.is_initialized() else -1

    def __repr__(self) -> str:
        args = [repr(a) for a in self.module_args] + [f"{k}={v!r}" for k, v in self.module_kwargs.items()]
        return f"{self.typename.__name__}({', '.join(args)})"

    def build(self, log: bool = False) -> nn.Module:
        if log:
            log_dist(f"RANK={self.global_rank} building {self!r}", ranks=[-1])
        return self.typename(*self.module_args, **self.module_kwargs)


class TiedLayerSpec(LayerSpec):
    """A layer shared by every spec with the same `key`; `forward_fn(module, x)` overrides its forward."""

    def __init__(self, key, typename, *module_args, forward_fn=None, tied_weight_attr=("weight",), **module_kwargs) -> None:
        super().__init__(typename, *module_args, **module_kwargs)
        self.key = key
        self.forward_fn = forward_fn
        self.tied_weight_attr = [tied_weight_attr] if isinstance(tied_weight_attr, str) else list(tied_weight_attr)


# -- partitioning (DeepSpeed's runtime/utils.py arithmetic, so stage boundaries match) -------
def partition_uniform(num_items: int, num_parts: int) -> list[int]:
    if num_items <= num_parts:
        return [min(p, num_items) for p in range(num_parts + 1)]
    chunk, residual = divmod(num_items, num_parts)
    return [p * chunk + min(p, residual) for p in range(num_parts + 1)]


def partition_balanced(weights: list[float], num_parts: int) -> list[int]:
    """Split into contiguous parts minimising (heaviest - lightest) part; DeepSpeed's DP and tie-breaks."""
    n, m = len(weights), num_parts
    if n <= m:
        return partition_uniform(n, m)
    inf = float("inf")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    best_max = [[inf] * (m + 1) for _ in range(n + 1)]
    best_min = [[inf] * (m + 1) for _ in range(n + 1)]
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    position = [[0] * (m + 1) for _ in range(n + 1)]
    best_max[0][0] = cost[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, min(i, m) + 1):
            for k in range(i):
                part = prefix[i] - prefix[k]
                high, low = max(best_max[k][j - 1], part), min(best_min[k][j - 1], part)
                if cost[i][j] >= high - low:
                    cost[i][j], best_max[i][j], best_min[i][j], position[i][j] = high - low, high, low, k
    parts = [n]
    for j in reversed(range(1, m + 1)):
        parts.append(position[parts[-1]][j])
    return parts[::-1]


def _layer_name(layer) -> str:
    if isinstance(layer, LayerSpec):
        return layer.typename.__name__
    if isinstance(layer, nn.Module):
        return type(layer).__name__
    return getattr(layer, "__name__", type(layer).__name__)


def _trainable_numel(layer) -> int:
    """Trainable parameters of a layer, counted without allocating it where possible."""
    if isinstance(layer, nn.Module):
        return sum(p.numel() for p in layer.parameters() if p.requires_grad)
    if not isinstance(layer, LayerSpec):
        return 0
    try:
        with torch.device("meta"):
            built = layer.build()
    except Exception:  # noqa: BLE001 - a constructor that computes on real tensors: build it for real
        built = layer.build()
    return sum(p.numel() for p in built.parameters() if p.requires_grad)


class PipelineModule(nn.Module):
    """Layers `layers` split over `num_stages` stages; `forward` runs this stage's slice.

    With `activation_checkpoint_interval=k > 0`, every run of k layers that holds parameters
    (or whose class is in `checkpointable_layers`) is recomputed in backward by
    `activation_checkpoint_func`: by default `zerospeed.checkpointing.checkpoint`
    (torch.utils.checkpoint, non-reentrant, configured by the `activation_checkpointing`
    section); `torch.utils.checkpoint.checkpoint` itself is called with `use_reentrant=False`.
    `dynamic_shape=True` renegotiates activation shapes at every transfer.
    """

    def __init__(
        self,
        layers,
        num_stages: int | None = None,
        topology: ProcessTopology | None = None,
        loss_fn: Callable | None = None,
        seed_layers: bool = False,
        seed_fn: Callable | None = None,
        base_seed: int = 1234,
        partition_method: str = "parameters",
        activation_checkpoint_interval: int = 0,
        activation_checkpoint_func: Callable | None = None,
        checkpointable_layers: list[str] | None = None,
        dynamic_shape: bool = False,
    ) -> None:
        super().__init__()
        # Everything checkable from the arguments alone fails here, before any collective.
        if num_stages is None and topology is None:
            raise ConfigError("PipelineModule needs num_stages= or topology=")
        self._layer_specs = list(layers)
        self._validate_layers()
        stages = topology.get_dim("pipe") if topology is not None else num_stages
        if not isinstance(stages, int) or stages < 1:
            raise ConfigError(f"PipelineModule(num_stages={stages!r}): need a positive integer")
        if stages > len(self._layer_specs):
            raise ConfigError(
                f"PipelineModule has {len(self._layer_specs)} layers but num_stages={stages}: "
                "every stage needs at least one layer; use fewer stages"
            )
        if checkpointable_layers is not None and not isinstance(checkpointable_layers, list):
            raise ConfigError(f"checkpointable_layers must be a list of class names, got {type(checkpointable_layers).__name__}")
        self.num_stages = stages
        self._num_layers = len(self._layer_specs)
        self.parts = self._partition(partition_method)
        if not comm.is_initialized():
            comm.init_distributed()
        world = comm.get_world_size()
        if topology is None:
            if world % num_stages:
                raise ConfigError(f"PipelineModule(num_stages={num_stages}) must divide the world size {world}")
            topology = PipeDataParallelTopology(num_pp=num_stages, num_dp=world // num_stages)
        self.loss_fn = loss_fn
        self.seed_layers, self.seed_fn, self.base_seed = seed_layers, seed_fn, base_seed
        self.activation_checkpoint_interval = int(activation_checkpoint_interval)
        self.activation_checkpoint_func = activation_checkpoint_func
        self.checkpointable_layers = checkpointable_layers
        self.dynamic_shape = dynamic_shape
        self.micro_offset = 0

        self._topo = topology
        self._grid = PipelineParallelGrid(topology=topology)  # collective: every rank, same order
        self.global_rank = comm.get_rank()
        self.world_size = world
        self.stage_id = self._grid.get_stage_id()
        self._local_start, self._local_stop = self.parts[self.stage_id], self.parts[self.stage_id + 1]

        self.forward_funcs: list[Callable] = []
        self.tied_modules = nn.ModuleDict()
        self.tied_weight_attrs: dict[str, list[str]] = {}
        self._build()
        self.tied_comms = self._index_tied_modules()  # collective: creates the tie groups
        self._synchronize_tied_weights()

    # -- construction ---------------------------------------------------------------------------
    def _validate_layers(self) -> None:
        if not self._layer_specs:
            raise ConfigError("PipelineModule(layers=[]) has no layers")
        for index, layer in enumerate(self._layer_specs):
            if isinstance(layer, PipelineModule):
                raise ConfigError(f"layer {index} is a PipelineModule; nesting pipelines is not supported")
            if not (isinstance(layer, (LayerSpec, nn.Module)) or callable(layer)):
                raise ConfigError(
                    f"layer {index} is a {type(layer).__name__}; each layer must be a LayerSpec, TiedLayerSpec, "
                    "torch.nn.Module or a callable"
                )

    def _partition(self, method: str) -> list[int]:
        method = (method or "parameters").lower()
        if method == "uniform":
            parts = partition_uniform(self._num_layers, self.num_stages)
        elif method == "parameters":
            parts = partition_balanced([_trainable_numel(layer) for layer in self._layer_specs], self.num_stages)
        elif method.startswith("type:"):
            pattern = re.compile(method.split(":", 1)[1], re.IGNORECASE)
            weights = [1 if pattern.search(_layer_name(layer)) else 0 for layer in self._layer_specs]
            if not any(weights):
                raise ConfigError(f"partition_method={method!r} matches no layer; layer types: {sorted({_layer_name(l) for l in self._layer_specs})}")
            parts = partition_balanced(weights, self.num_stages)
        else:
            raise ConfigError(f"partition_method={method!r} is not supported; allowed: 'parameters', 'uniform', 'type:<regex>'")
        empty = [s for s in range(self.num_stages) if parts[s] == parts[s + 1]]
        if empty:
            raise ConfigError(
                f"partition_method={method!r} leaves stage(s) {empty} without layers (boundaries {parts}); "
                "use 'uniform' or fewer stages"
            )
        return parts

    def _build(self) -> None:
        for index in range(self._local_start, self._local_stop):
            layer = self._layer_specs[index]
            if self.seed_layers:
                (self.seed_fn or torch.manual_seed)(self.base_seed + index)
            if isinstance(layer, TiedLayerSpec):
                if layer.key not in self.tied_modules:
                    self.tied_modules[layer.key] = layer.build()
                    self.tied_weight_attrs[layer.key] = layer.tied_weight_attr
                module = self.tied_modules[layer.key]
                self.forward_funcs.append(module if layer.forward_fn is None else partial(layer.forward_fn, module))
            elif isinstance(layer, (LayerSpec, nn.Module)):
                module = layer.build() if isinstance(layer, LayerSpec) else layer
                self.add_module(str(index), module)
                self.forward_funcs.append(module)
            else:
                self.forward_funcs.append(layer)
        for param in self.parameters():
            param.ds_pipe_replicated = False

    def _index_tied_modules(self) -> dict:
        """Tie groups (the holders of each key at one data/model index) and which copies are replicas."""
        tied = {}
        self.ties_span_stages = False  # the same on every rank: derived from the specs alone
        if self.num_stages == 1:
            return tied
        keys = sorted({s.key for s in self._layer_specs if isinstance(s, TiedLayerSpec)})
        for key in keys:
            stages = sorted({self.stage_owner(i) for i, s in enumerate(self._layer_specs) if isinstance(s, TiedLayerSpec) and s.key == key})
            self.ties_span_stages |= len(stages) > 1
            for data_index in range(self._grid.data_parallel_size):
                for model_index in range(self._grid.get_slice_parallel_world_size()):
                    coords = {"data": data_index}
                    if "model" in self._topo.get_axis_names():
                        coords["model"] = model_index
                    ranks = [self._topo.get_rank(pipe=s, **coords) for s in stages]
                    group = comm.new_group(ranks) if len(ranks) > 1 else None
                    if self.global_rank in ranks and len(ranks) > 1:
                        tied[key] = {"ranks": ranks, "group": group, "weight_attr": self.tied_weight_attrs[key], "module": self.tied_modules[key]}
                        if self.global_rank != ranks[0]:  # count the tied weights once in the gradient norm
                            for param in self.tied_modules[key].parameters():
                                param.ds_pipe_replicated = True
        return tied

    @staticmethod
    def _recursive_getattr(module: nn.Module, attr_name: str):
        value = module
        for item in attr_name.split("."):
            value = getattr(value, item)
        return value

    def get_tied_weights_and_groups(self) -> list[tuple[torch.nn.Parameter, object]]:
        return [
            (self._recursive_getattr(info["module"], attr), info["group"])
            for info in self.tied_comms.values()
            for attr in info["weight_attr"]
        ]

    def _synchronize_tied_weights(self) -> None:
        for info in self.tied_comms.values():
            for attr in info["weight_attr"]:
                comm.broadcast(self._recursive_getattr(info["module"], attr).data, src=info["ranks"][0], group=info["group"])

    def allreduce_tied_weight_gradients(self) -> None:
        for weight, group in self.get_tied_weights_and_groups():
            if weight.grad is not None:
                comm.all_reduce(weight.grad, group=group)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, forward_input):
        self.micro_offset += 1
        micro_offset = self.micro_offset
        count = len(self.forward_funcs)
        interval = self.activation_checkpoint_interval
        if interval <= 0:
            return self._run_range(0, count, micro_offset)(forward_input)
        x = forward_input
        for start in range(0, count, interval):
            end = min(start + interval, count)
            run = self._run_range(start, end, micro_offset)
            if self._is_checkpointable(self.forward_funcs[start:end]):
                x = self._checkpoint(run, x)
            else:
                x = run(x)
        return x

    def _run_range(self, start: int, end: int, micro_offset: int):
        def run(x):
            for offset, layer in enumerate(self.forward_funcs[start:end]):
                self.curr_layer = start + offset + self._local_start
                if self.seed_layers:
                    (self.seed_fn or torch.manual_seed)(self.base_seed * (micro_offset + 1) + self.curr_layer)
                x = layer(x)
            return x

        return run

    def _checkpoint(self, run, x):
        func = self.activation_checkpoint_func
        if func is None:
            from zerospeed import checkpointing

            return checkpointing.checkpoint(run, x)
        import torch.utils.checkpoint as torch_checkpoint

        if func is torch_checkpoint.checkpoint:
            return func(run, x, use_reentrant=False)
        return func(run, x)

    def _is_checkpointable(self, funcs) -> bool:
        if self.checkpointable_layers is not None:
            return all(type(f).__name__ in self.checkpointable_layers for f in funcs)
        return any(isinstance(f, nn.Module) and next(f.parameters(), None) is not None for f in funcs)

    # -- DeepSpeed accessors -----------------------------------------------------------------------
    def partitions(self) -> list[int]:
        return self.parts

    def stage_owner(self, layer_idx: int) -> int:
        if not 0 <= layer_idx < self._num_layers:
            raise ConfigError(f"layer index {layer_idx} outside 0..{self._num_layers - 1}")
        for stage in range(self.num_stages):
            if self.parts[stage] <= layer_idx < self.parts[stage + 1]:
                return stage
        raise PipelineError(f"layer {layer_idx} has no stage (boundaries {self.parts})")

    def set_checkpoint_interval(self, interval: int) -> None:
        if interval < 0:
            raise ConfigError(f"activation checkpoint interval {interval} must be >= 0")
        self.activation_checkpoint_interval = interval

    def topology(self) -> ProcessTopology:
        return self._topo

    def mpu(self) -> PipelineParallelGrid:
        return self._grid

    def num_pipeline_stages(self) -> int:
        return self.num_stages

    def get_additional_losses(self):
        return None
