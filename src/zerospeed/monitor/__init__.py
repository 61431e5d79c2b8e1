"""Training monitors (TensorBoard, CSV, W&B, Comet) behind one MonitorMaster, as in DeepSpeed.

`engine.monitor.write_events([(name, value, step), ...])` writes user events next to the
engine's own (`Train/Samples/train_loss`, `lr`, `loss_scale`, `throughput`, ...).
"""

from zerospeed.monitor._require import MissingPackageError
from zerospeed.monitor.monitor import Monitor, MonitorMaster

__all__ = ["Monitor", "MonitorMaster", "MissingPackageError"]
