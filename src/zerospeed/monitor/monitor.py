"""MonitorMaster: fan one list of (name, value, step) events out to every enabled monitor, on rank 0.

Same module path and class names as DeepSpeed (`deepspeed.monitor.monitor.MonitorMaster`).
Each backend lives in its own module and is imported only when its section is enabled.
"""

from __future__ import annotations

import abc
import numbers
from typing import Any, Iterable

Event = tuple[str, Any, int]


class Monitor(abc.ABC):
    """One destination for training events."""

    def __init__(self, monitor_config) -> None:
        self.monitor_config = monitor_config

    @abc.abstractmethod
    def write_events(self, event_list: list[Event]) -> None: ...

    def flush(self) -> None:
        """Push buffered events to disk (or the service)."""

    def close(self) -> None:
        """Flush and release files, writers and runs."""
        self.flush()


# config section -> (module holding the monitor, class name, python package it needs, pip spec)
BACKENDS: dict[str, tuple[str, str, str, str]] = {
    "tensorboard": ("zerospeed.monitor.tensorboard", "TensorBoardMonitor", "tensorboard", "tensorboard"),
    "wandb": ("zerospeed.monitor.wandb", "WandbMonitor", "wandb", "wandb"),
    "csv_monitor": ("zerospeed.monitor.csv", "CSVMonitor", "csv", "csv"),
    "comet": ("zerospeed.monitor.comet", "CometMonitor", "comet_ml", "comet_ml>=3.41.0"),
}


class MonitorMaster(Monitor):
    """Every monitor enabled in the config, written to by rank 0 only.

    `config` is the whole ZeroSpeedConfig (or anything with `tensorboard`, `wandb`,
    `csv_monitor` and `comet` sections). A section enabled without its package installed
    raises MissingPackageError on every rank, naming the package and the pip command.
    """

    def __init__(self, config, rank: int | None = None) -> None:
        super().__init__(config)
        import importlib

        from zerospeed.monitor._require import check_installed

        if rank is None:
            from zerospeed import comm

            rank = comm.get_rank() if comm.is_initialized() else 0
        self.rank = rank
        sections = {name: getattr(config, name, None) for name in BACKENDS}
        enabled = [name for name, section in sections.items() if section is not None and section.enabled]
        for name in enabled:
            check_installed(BACKENDS[name][2], name, BACKENDS[name][3])
        self.enabled = bool(enabled)
        self.monitors: dict[str, Monitor] = {}
        if rank == 0:
            for name in enabled:
                module_name, class_name, _, _ = BACKENDS[name]
                self.monitors[name] = getattr(importlib.import_module(module_name), class_name)(sections[name])

    # DeepSpeed's attribute names, for scripts that reach into the master
    @property
    def tb_monitor(self):
        return self.monitors.get("tensorboard")

    @property
    def wandb_monitor(self):
        return self.monitors.get("wandb")

    @property
    def csv_monitor(self):
        return self.monitors.get("csv_monitor")

    @property
    def comet_monitor(self):
        return self.monitors.get("comet")

    def write_events(self, event_list: Iterable[Event]) -> None:
        """Write `[(name, value, step), ...]`; tensors become Python numbers. No-op off rank 0."""
        if not self.monitors:
            return
        events = [(str(name), _plain(value), int(step)) for name, value, step in event_list]
        for monitor in self.monitors.values():
            monitor.write_events(events)

    def flush(self) -> None:
        for monitor in self.monitors.values():
            monitor.flush()

    def close(self) -> None:
        for monitor in self.monitors.values():
            monitor.close()


def _plain(value: Any) -> Any:
    if isinstance(value, numbers.Number):
        return value
    item = getattr(value, "item", None)  # torch tensors and numpy scalars
    return item() if callable(item) else value
