"""Comet monitor: events through comet_ml, each name logged at most once per `samples_log_interval` samples."""

from __future__ import annotations

from zerospeed.monitor._require import require
from zerospeed.monitor.monitor import Event, Monitor

MIN_COMET_VERSION = (3, 41, 0)


class CometMonitor(Monitor):
    def __init__(self, comet_config) -> None:
        super().__init__(comet_config)
        comet_ml = require("comet_ml", "comet", "comet_ml>=3.41.0")
        version = tuple(int(p) for p in str(getattr(comet_ml, "__version__", "0")).split(".")[:3] if p.isdigit())
        if version and version < MIN_COMET_VERSION:
            from zerospeed.monitor._require import MissingPackageError

            raise MissingPackageError(
                f"comet.enabled needs comet_ml>=3.41.0, found {comet_ml.__version__}: pip install 'comet_ml>=3.41.0'"
            )
        self.enabled = comet_config.enabled
        self.samples_log_interval = comet_config.samples_log_interval
        self._last_logged: dict[str, int] = {}
        self.experiment = comet_ml.start(
            api_key=comet_config.api_key,
            project=comet_config.project,
            workspace=comet_config.workspace,
            experiment_key=comet_config.experiment_key,
            mode=comet_config.mode,
            online=comet_config.online,
        )
        if comet_config.experiment_name is not None:
            self.experiment.set_name(comet_config.experiment_name)

    def _due(self, name: str, samples: int) -> bool:
        last = self._last_logged.get(name)
        if last is None or samples - last >= self.samples_log_interval:
            self._last_logged[name] = samples
            return True
        return False

    def write_events(self, event_list: list[Event]) -> None:
        for name, value, samples in event_list:
            if self._due(name, samples):
                self.experiment.log_metric(name, value, step=samples)

    def close(self) -> None:
        end = getattr(self.experiment, "end", None)
        if callable(end):
            end()
