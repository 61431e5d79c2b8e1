"""ZeRO-3 memory estimates: DeepSpeed's printed tables, and the exact bytes zerospeed holds.

`estimate_zero3_model_states_mem_needs_all_live/_all_cold` print the table DeepSpeed's
functions of those names print (same formula, same layout). Unlike DeepSpeed's, the
parameter count of a model already partitioned by `zero.Init` uses `ds_numel`, not the
empty `param.data`. `stage3_model_states_bytes_per_rank` is what zerospeed itself holds
between steps, from the stage-3 partition arithmetic (per-parameter chunks, persistent
parameters kept whole).
"""

from __future__ import annotations

import torch

from zerospeed.zero.stage3.layout import chunk_numel

GiB = 2**30


def _numel(param: torch.Tensor) -> int:
    return int(getattr(param, "ds_numel", param.numel()))


def model_to_params(model: torch.nn.Module) -> tuple[int, int]:
    """(unique parameter count, largest number of direct parameters of one module)."""
    total = sum({id(p): _numel(p) for p in model.parameters()}.values())
    largest = max((sum(_numel(p) for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return total, largest


def estimate_zero3_model_states_mem_needs(total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1,
                                          num_nodes: int = 1, cpu_offload: bool = True, cpu_offload_params: bool = True,
                                          zero_init: bool = True, additional_buffer_factor: float = 1.5):
    """(cpu bytes, device bytes, largest layer bytes) per device: DeepSpeed's stage-3 formula."""
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            per_param = 18 * gpus_factor
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            per_param = 16 * gpus_factor
        if zero_init:
            cpu_mem = total_params * per_param * additional_buffer_factor
        else:
            cpu_mem = total_params * max(4 * num_gpus_per_node, per_param) * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        counted = largest_layer_params if zero_init else total_params
        cpu_mem = counted * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory


def estimate_zero3_model_states_mem_needs_all_cold(total_params: int, largest_layer_params: int,
                                                   num_gpus_per_node: int = 1, num_nodes: int = 1,
                                                   additional_buffer_factor: float = 1.5) -> None:
    nodes = "nodes" if num_nodes > 1 else "node"
    gpus = "GPUs" if num_gpus_per_node > 1 else "GPU"
    print(
        "Estimated memory needed for params, optim states and gradients for a:\n"
        f"HW: Setup with {num_nodes} {nodes}, {num_gpus_per_node} {gpus} per node.\n"
        f"SW: Model with {int(total_params / 1e6)}M total params, {int(largest_layer_params / 1e6)}M largest layer params."
    )
    print("  per CPU  |  per GPU |   Options")
    for cpu_offload in (True, False):
        for cpu_offload_params in (True, False):
            if not cpu_offload and cpu_offload_params:
                continue
            for zero_init in (True, False):
                cpu_mem, gpu_mem, _ = estimate_zero3_model_states_mem_needs(
                    total_params, largest_layer_params, num_gpus_per_node, num_nodes, cpu_offload,
                    cpu_offload_params, zero_init, additional_buffer_factor)
                options = (f"offload_param={'cpu ' if cpu_offload_params else 'none'}, "
                           f"offload_optimizer={'cpu ' if cpu_offload else 'none'}, zero_init={1 if zero_init else 0}")
                print(f" {cpu_mem / GiB:7.2f}GB | {gpu_mem / GiB:6.2f}GB | {options}")


def estimate_zero3_model_states_mem_needs_all_live(model: torch.nn.Module, num_gpus_per_node: int = 1,
                                                   num_nodes: int = 1, additional_buffer_factor: float = 1.5) -> None:
    total, largest = model_to_params(model)
    estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node, num_nodes, additional_buffer_factor)


def stage3_model_states_bytes_per_rank(param_numels: list[int], world_size: int, param_bytes: int = 4,
                                       mixed: bool = False, persistence_threshold: int = 100_000,
                                       optimizer_state_bytes: int = 8) -> dict[str, int]:
    """Bytes zerospeed holds per rank between steps at stage 3 (all parameters trainable).

    Each parameter keeps a chunk of ceil(numel / N) elements (working dtype), a gradient
    chunk (fp32), optimizer state per chunk element and, in mixed precision, an fp32
    master chunk; parameters of at most `persistence_threshold` elements are also kept whole.
    """
    chunks = sum(chunk_numel(n, world_size) for n in param_numels)
    persistent = sum(n for n in param_numels if n <= persistence_threshold)
    return {
        "params": (chunks + persistent) * param_bytes,
        "grads": chunks * 4,
        "master": chunks * 4 if mixed else 0,
        "optimizer_states": chunks * optimizer_state_bytes,
    }
