"""Turn `training_data` into a per-rank DataLoader, as DeepSpeed's `deepspeed_io` does."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class RepeatingLoader:
    """Wrap an iterable so it restarts when exhausted (DeepSpeed's `RepeatingLoader`)."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.data_iter = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.data_iter)
        except StopIteration:
            sampler = getattr(self.loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):  # a new epoch reshuffles, like a fresh run would
                sampler.set_epoch(sampler.epoch + 1)
            self.data_iter = iter(self.loader)
            return next(self.data_iter)


def build_dataloader(
    dataset: Dataset,
    micro_batch_size: int,
    world_size: int,
    rank: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader whose DistributedSampler gives each data-parallel rank its own shard."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return DataLoader(dataset, batch_size=micro_batch_size, collate_fn=collate_fn, drop_last=drop_last)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_size=micro_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
