"""Weights & Biases monitor: one `wandb.log` per step with every event of that step.

Set WANDB_MODE=offline (and WANDB_DIR) to write the run to local files only.
"""

from __future__ import annotations

from zerospeed.monitor._require import require
from zerospeed.monitor.monitor import Event, Monitor


class WandbMonitor(Monitor):
    def __init__(self, wandb_config) -> None:
        super().__init__(wandb_config)
        self._wandb = require("wandb", "wandb")
        self.enabled = wandb_config.enabled
        self.group = wandb_config.group
        self.team = wandb_config.team
        self.project = wandb_config.project
        self.run = self._wandb.init(project=self.project, group=self.group, entity=self.team)

    def log(self, data: dict, step: int | None = None, commit: bool | None = None):
        return self.run.log(data, step=step, commit=commit)

    def write_events(self, event_list: list[Event]) -> None:
        by_step: dict[int, dict] = {}
        for name, value, step in event_list:
            by_step.setdefault(step, {})[name] = value
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
