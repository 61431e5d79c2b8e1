"""tensorboard / csv_monitor / wandb / comet sections: where training metrics go.

Defaults are DeepSpeed's (monitor/config.py); rank 0 writes under output_path/job_name.
"""

from __future__ import annotations

from typing import Optional

from ._base import Bool, Choice, ConfigModel, Int


class TensorBoardConfig(ConfigModel):
    section = "tensorboard"
    enabled: Bool = False
    output_path: str = ""
    job_name: str = "DeepSpeedJobName"


class CSVConfig(ConfigModel):
    section = "csv_monitor"
    enabled: Bool = False
    output_path: str = ""
    job_name: str = "DeepSpeedJobName"


class WandbConfig(ConfigModel):
    section = "wandb"
    enabled: Bool = False
    group: Optional[str] = None
    team: Optional[str] = None
    project: str = "deepspeed"


class CometConfig(ConfigModel):
    section = "comet"
    enabled: Bool = False
    samples_log_interval: Int(gt=0) = 100
    project: Optional[str] = None
    workspace: Optional[str] = None
    api_key: Optional[str] = None
    experiment_name: Optional[str] = None
    experiment_key: Optional[str] = None
    online: Optional[bool] = None
    mode: Choice("get", "create", "get_or_create", optional=True) = None
