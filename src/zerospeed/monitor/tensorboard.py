"""TensorBoard monitor: scalars through torch.utils.tensorboard.SummaryWriter under output_path/job_name."""

from __future__ import annotations

import os

from zerospeed.monitor._require import require
from zerospeed.monitor.monitor import Event, Monitor

FLUSH_SECS = 10


class TensorBoardMonitor(Monitor):
    def __init__(self, tensorboard_config) -> None:
        super().__init__(tensorboard_config)
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.enabled = tensorboard_config.enabled
        self.output_path = tensorboard_config.output_path
        self.job_name = tensorboard_config.job_name
        self.log_dir = os.path.join(self.output_path, self.job_name)
        os.makedirs(self.log_dir, exist_ok=True)
        # The writer's own thread flushes every FLUSH_SECS; flushing at every step (DeepSpeed's
        # default) costs ~0.5 ms a step for nothing a reader would notice. close() flushes.
        self.summary_writer = SummaryWriter(log_dir=self.log_dir, flush_secs=FLUSH_SECS)

    def write_events(self, event_list: list[Event], flush: bool = False) -> None:
        for name, value, step in event_list:
            self.summary_writer.add_scalar(name, value, step)
        if flush:
            self.flush()

    def flush(self) -> None:
        self.summary_writer.flush()

    def close(self) -> None:
        self.summary_writer.close()
