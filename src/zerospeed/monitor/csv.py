"""CSV monitor: one file per event, `output_path/job_name/<name with / -> _>.csv`, DeepSpeed's format.

Each file starts with the header `step,<last part of the event name>` (written the first
time this process writes the event, as DeepSpeed's csvMonitor does) and gets one
`step,value` row per write.
"""

from __future__ import annotations

import csv
import os
from typing import IO

from zerospeed.monitor.monitor import Event, Monitor


class CSVMonitor(Monitor):
    def __init__(self, csv_config) -> None:
        super().__init__(csv_config)
        self.enabled = csv_config.enabled
        self.output_path = csv_config.output_path
        self.job_name = csv_config.job_name
        self.log_dir = os.path.join(self.output_path, self.job_name)
        os.makedirs(self.log_dir, exist_ok=True)
        self.filenames: list[str] = []
        self._files: dict[str, tuple[IO[str], "csv._writer"]] = {}

    def _writer(self, log_name: str):
        filename = log_name.replace("/", "_").replace(" ", "_")
        if filename not in self._files:
            handle = open(os.path.join(self.log_dir, filename + ".csv"), "a+", newline="")
            writer = csv.writer(handle)
            writer.writerow(["step", log_name.split("/")[-1]])
            self._files[filename] = (handle, writer)
            self.filenames.append(filename)
        return self._files[filename][1]

    def write_events(self, event_list: list[Event]) -> None:
        for log_name, value, step in event_list:
            self._writer(log_name).writerow([step, value])
        self.flush()

    def flush(self) -> None:
        for handle, _ in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()
        self._files.clear()


csvMonitor = CSVMonitor  # DeepSpeed's class name
