"""DeepSpeed's `deepspeed.runtime.dataloader`: `DeepSpeedDataLoader` and `RepeatingLoader`.

`DeepSpeedDataLoader` takes DeepSpeed's constructor arguments and iterates like it (each
`next()` starts the throughput timer it was given); the loading itself is
`runtime.data.build_dataloader`, the same per-rank DataLoader `initialize(training_data=...)`
builds. DeepSpeed's curriculum-learning sampler (data efficiency) is not built.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import DataLoader, RandomSampler

from zerospeed import comm
from zerospeed.runtime.data import RepeatingLoader, build_dataloader


class DeepSpeedDataLoader:
    """A per-data-parallel-rank loader of `dataset` in micro-batches of `batch_size`."""

    def __init__(self, dataset, batch_size: int, pin_memory: bool = False, local_rank: int = 0, tput_timer=None,
                 collate_fn: Callable | None = None, num_local_io_workers: int | None = None, data_sampler=None,
                 data_parallel_world_size: int | None = None, data_parallel_rank: int | None = None,
                 dataloader_drop_last: bool = False, deepspeed_dataloader_config: dict | None = None) -> None:
        if (deepspeed_dataloader_config or {}).get("curriculum_learning"):
            from zerospeed.runtime.unsupported import NotProvidedImportError

            feature = "data efficiency: curriculum learning, random-LTD (deepspeed.runtime.data_pipeline)"
            raise NotProvidedImportError(f"zerospeed does not provide {feature}: DeepSpeedDataLoader cannot "
                                         "use a curriculum-learning sampler", feature)
        self.tput_timer = tput_timer
        self.batch_size = batch_size
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.dataloader_drop_last = dataloader_drop_last
        self.curriculum_learning_enabled = False
        self.post_process_func: Callable | None = None  # DeepSpeed applies it only under curriculum learning
        # DeepSpeed starts 2 workers per device by default; the batches are the same with none,
        # and zerospeed's own training_data loader uses none, so None means 0 here.
        self.num_local_io_workers = num_local_io_workers or 0
        world = comm.get_world_size() if data_parallel_world_size is None else data_parallel_world_size
        rank = comm.get_rank() if data_parallel_rank is None else data_parallel_rank
        if data_sampler is None and local_rank >= 0:
            self.dataloader = build_dataloader(dataset, batch_size, world, rank, collate_fn=collate_fn,
                                               drop_last=dataloader_drop_last, num_workers=self.num_local_io_workers,
                                               pin_memory=pin_memory)
        else:
            sampler = data_sampler if data_sampler is not None else RandomSampler(dataset)
            self.dataloader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                                         num_workers=self.num_local_io_workers, pin_memory=pin_memory,
                                         drop_last=dataloader_drop_last)
        self.data_sampler = self.dataloader.sampler
        self.len = len(self.dataloader)
        self._batches: Any = None

    def __iter__(self):
        self._batches = iter(self.dataloader)
        return self

    def __len__(self) -> int:
        return self.len

    def __next__(self):
        if self.tput_timer is not None:
            self.tput_timer.start()
        if self._batches is None:
            self._batches = iter(self.dataloader)
        return next(self._batches)


__all__ = ["DeepSpeedDataLoader", "RepeatingLoader"]
