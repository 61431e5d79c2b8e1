"""Memory estimates for model states: DeepSpeed's printed tables, and our exact per-rank bytes.

`estimate_zero2_model_states_mem_needs_all_live/_all_cold` print the same table as
DeepSpeed's functions of those names. `model_states_bytes_per_rank` is what zerospeed
itself will hold: it runs the engine's own partition arithmetic (buckets, padding,
alignment) so it matches `engine.memory_report()` byte for byte, rather than a rule of thumb.
"""

from __future__ import annotations

import torch

from zerospeed.zero.builder import MAX_BUCKET_NUMEL
from zerospeed.zero.flat import bucket_layout, plan_buckets

GiB = 2**30


def model_to_params(model: torch.nn.Module) -> int:
    """Unique parameter count (tied parameters counted once)."""
    return sum({id(p): p.numel() for p in model.parameters()}.values())


def estimate_zero2_model_states_mem_needs(
    total_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1, cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """(cpu bytes, device bytes) per device, DeepSpeed's stage 1/2 formula for mixed precision."""
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 2 * total_params + int(18 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def estimate_zero2_model_states_mem_needs_all_cold(
    total_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1, additional_buffer_factor: float = 1.5,
) -> None:
    nodes = "nodes" if num_nodes > 1 else "node"
    gpus = "GPUs" if num_gpus_per_node > 1 else "GPU"
    print(
        "Estimated memory needed for params, optim states and gradients for a:\n"
        f"HW: Setup with {num_nodes} {nodes}, {num_gpus_per_node} {gpus} per node.\n"
        f"SW: Model with {int(total_params / 1e6)}M total params."
    )
    print("  per CPU  |  per GPU |   Options")
    for cpu_offload in (True, False):
        cpu_mem, gpu_mem = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node, num_nodes, cpu_offload, additional_buffer_factor
        )
        device = "cpu " if cpu_offload else "none"
        print(f" {cpu_mem / GiB:7.2f}GB | {gpu_mem / GiB:6.2f}GB | offload_optimizer={device}")


def estimate_zero2_model_states_mem_needs_all_live(
    model: torch.nn.Module, num_gpus_per_node: int = 1, num_nodes: int = 1, additional_buffer_factor: float = 1.5,
) -> None:
    estimate_zero2_model_states_mem_needs_all_cold(
        model_to_params(model), num_gpus_per_node, num_nodes, additional_buffer_factor
    )


def model_states_bytes_per_rank(
    param_numels: list[int],
    world_size: int,
    rank: int,
    stage: int,
    param_bytes: int = 4,
    mixed: bool = False,
    offload: bool = False,
    reduce_bucket_size: int = 500_000_000,
    optimizer_state_bytes: int = 8,
) -> dict[str, int]:
    """Bytes zerospeed holds on `rank` for one param group of `param_numels` (stages 0-2).

    Params are laid out in bucket order (reverse registration), as the engine does; pass
    numels in registration order. Optimizer state counts per-element state only (Adam's
    two moments = 8 bytes); torch's scalar `step` tensors come on top.
    """
    numels = list(reversed(param_numels))
    bucket_numel = max(1, min(int(reduce_bucket_size), MAX_BUCKET_NUMEL))
    totals = {"params": 0, "grads": 0, "master": 0, "optimizer_states": 0}
    for indices in plan_buckets(numels, bucket_numel):
        layout = bucket_layout([numels[i] for i in indices], world_size)
        start, end = (0, layout.padded_numel) if stage == 0 else layout.partition_range(rank)
        owned = max(0, min(end, layout.numel) - start)  # real (unpadded) elements this rank steps
        totals["params"] += layout.padded_numel * param_bytes
        totals["grads"] += 4 * (layout.padded_numel if stage <= 1 else layout.partition_numel)
        if mixed or offload:
            totals["master"] += 4 * (end - start)
        totals["optimizer_states"] += optimizer_state_bytes * owned
    return totals
