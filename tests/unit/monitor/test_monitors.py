"""Monitors read back: CSV bytes in DeepSpeed's format, TensorBoard scalars, W&B offline files, clear errors."""

from __future__ import annotations

import glob
import os
import sys
import types

import pytest
import torch

from zerospeed.config import load_config
from zerospeed.monitor import MissingPackageError, MonitorMaster

EVENTS = [
    [("Train/Samples/train_loss", 2.5, 8), ("Train/Samples/lr", 0.001, 8)],
    [("Train/Samples/train_loss", torch.tensor(2.25), 16), ("Train/Samples/lr", 0.002, 16)],
]


def _config(tmp_path, **sections):
    return load_config({"train_micro_batch_size_per_gpu": 1, **sections}, world_size=1)


def test_csv_monitor_writes_deepspeed_format_one_file_per_event(tmp_path):
    cfg = _config(tmp_path, csv_monitor={"enabled": True, "output_path": str(tmp_path), "job_name": "job"})
    master = MonitorMaster(cfg, rank=0)
    assert master.enabled and master.csv_monitor is not None
    for events in EVENTS:
        master.write_events(events)
    master.close()
    job = tmp_path / "job"
    assert sorted(os.listdir(job)) == ["Train_Samples_lr.csv", "Train_Samples_train_loss.csv"]
    # DeepSpeed 0.19.8 csvMonitor: csv.writer rows ('\r\n'), header `step,<last name part>`, str(value)
    assert (job / "Train_Samples_train_loss.csv").read_bytes() == b"step,train_loss\r\n8,2.5\r\n16,2.25\r\n"
    assert (job / "Train_Samples_lr.csv").read_bytes() == b"step,lr\r\n8,0.001\r\n16,0.002\r\n"


def test_csv_monitor_same_bytes_as_deepspeed(tmp_path, monkeypatch):
    csv_monitor = pytest.importorskip("deepspeed.monitor.csv_monitor", reason="DeepSpeed itself is the reference")
    monkeypatch.setattr(csv_monitor.dist, "get_rank", lambda: 0)
    section = types.SimpleNamespace(enabled=True, output_path=str(tmp_path / "ds"), job_name="job")
    reference = csv_monitor.csvMonitor(section)
    cfg = _config(tmp_path, csv_monitor={"enabled": True, "output_path": str(tmp_path / "zs"), "job_name": "job"})
    ours = MonitorMaster(cfg, rank=0)
    for events in EVENTS:
        plain = [(n, float(v), s) for n, v, s in events]
        reference.write_events(plain)
        ours.write_events(plain)
    ours.close()
    for name in ("Train_Samples_lr.csv", "Train_Samples_train_loss.csv"):
        assert (tmp_path / "zs" / "job" / name).read_bytes() == (tmp_path / "ds" / "job" / name).read_bytes()


def test_only_rank_zero_writes(tmp_path):
    cfg = _config(tmp_path, csv_monitor={"enabled": True, "output_path": str(tmp_path), "job_name": "job"})
    master = MonitorMaster(cfg, rank=1)
    assert master.enabled and not master.monitors
    master.write_events(EVENTS[0])
    assert not (tmp_path / "job").exists()


def test_disabled_sections_make_a_disabled_master(tmp_path):
    master = MonitorMaster(_config(tmp_path), rank=0)
    assert not master.enabled and not master.monitors
    master.write_events(EVENTS[0])  # no-op


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _config(tmp_path, tensorboard={"enabled": True, "output_path": str(tmp_path), "job_name": "tb"})
    master = MonitorMaster(cfg, rank=0)
    for events in EVENTS:
        master.write_events(events)
    master.close()
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    loss = accumulator.Scalars("Train/Samples/train_loss")
    assert [(e.step, e.value) for e in loss] == [(8, 2.5), (16, 2.25)]
    assert [e.step for e in accumulator.Scalars("Train/Samples/lr")] == [8, 16]
    assert accumulator.Scalars("Train/Samples/lr")[1].value == pytest.approx(0.002)


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _config(tmp_path, wandb={"enabled": True, "project": "zerospeed-test", "group": "unit"})
    master = MonitorMaster(cfg, rank=0)
    for events in EVENTS:
        master.write_events(events)
    master.close()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1 and os.path.getsize(runs[0]) > 0


@pytest.mark.parametrize("section, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                              ("comet", "comet_ml")])
def test_enabled_monitor_with_missing_package_names_it(tmp_path, monkeypatch, section, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    cfg = _config(tmp_path, **{section: {"enabled": True}})
    for rank in (0, 1):  # every rank fails the same way, before any collective
        with pytest.raises(MissingPackageError) as info:
            MonitorMaster(cfg, rank=rank)
        message = str(info.value)
        assert f"'{package}'" in message and "pip install" in message and f"{section}.enabled" in message
        assert isinstance(info.value, ImportError)


def test_missing_package_at_import_time_on_rank_zero(tmp_path, monkeypatch):
    """find_spec says present but the import itself fails (a broken install): still named."""
    import importlib

    real_import_module = importlib.import_module

    def fake_import_module(name, *args, **kwargs):
        if name == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import_module(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import_module)
    from zerospeed.monitor.tensorboard import TensorBoardMonitor

    section = types.SimpleNamespace(enabled=True, output_path=str(tmp_path), job_name="tb")
    with pytest.raises(MissingPackageError, match="pip install 'tensorboard'"):
        TensorBoardMonitor(section)


class _FakeExperiment:
    def __init__(self) -> None:
        self.logged: list[tuple] = []
        self.name = None
        self.ended = False

    def log_metric(self, name, value, step=None):
        self.logged.append((name, value, step))

    def set_name(self, name):
        self.name = name

    def end(self):
        self.ended = True


def test_comet_monitor_logs_each_name_once_per_interval(tmp_path, monkeypatch):
    experiment = _FakeExperiment()
    fake = types.ModuleType("comet_ml")
    fake.__version__ = "3.45.0"
    fake.__spec__ = types.SimpleNamespace(name="comet_ml")
    fake.start = lambda **kwargs: experiment
    monkeypatch.setitem(sys.modules, "comet_ml", fake)
    monkeypatch.setattr("zerospeed.monitor._require.importlib.util.find_spec", lambda name: object())
    cfg = _config(tmp_path, comet={"enabled": True, "samples_log_interval": 16, "experiment_name": "exp"})
    master = MonitorMaster(cfg, rank=0)
    for step in (8, 16, 24, 40):
        master.write_events([("Train/Samples/lr", 0.1, step)])
    master.close()
    assert experiment.name == "exp" and experiment.ended
    assert experiment.logged == [("Train/Samples/lr", 0.1, 8), ("Train/Samples/lr", 0.1, 24),
                                 ("Train/Samples/lr", 0.1, 40)]
