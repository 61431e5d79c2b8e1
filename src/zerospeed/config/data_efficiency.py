"""data_efficiency: curriculum learning, dynamic batching and random-LTD (not built yet).

Only the outer levels are typed: the curriculum/random-LTD schedules are long free-form
objects whose meaning belongs to the data pipeline, which will validate them itself.
"""

from __future__ import annotations

from pydantic import model_validator

from ._base import Bool, ConfigModel, FreeDict, FrozenDict, Int, bad_value


class DataSamplingConfig(ConfigModel):
    section = "data_efficiency.data_sampling"
    enabled: Bool = False
    num_epochs: Int(ge=1) = 1000
    num_workers: Int(ge=0) = 0
    pin_memory: Bool = False
    curriculum_learning: FreeDict = FrozenDict()
    dynamic_batching: FreeDict = FrozenDict()

    @model_validator(mode="after")
    def _enabled_needs_fields(self) -> "DataSamplingConfig":
        curriculum = self.curriculum_learning
        if curriculum.get("enabled") and "curriculum_metrics" not in curriculum:
            raise bad_value(None, "required when curriculum_learning is enabled",
                            "curriculum_learning.curriculum_metrics")
        if self.dynamic_batching.get("enabled") and "max_tokens" not in self.dynamic_batching:
            raise bad_value(None, "required when dynamic_batching is enabled", "dynamic_batching.max_tokens")
        return self


class DataRoutingConfig(ConfigModel):
    section = "data_efficiency.data_routing"
    enabled: Bool = False
    random_ltd: FreeDict = FrozenDict()


class DataEfficiencyConfig(ConfigModel):
    section = "data_efficiency"
    enabled: Bool = False
    seed: Int() = 1234
    data_sampling: DataSamplingConfig = DataSamplingConfig()
    data_routing: DataRoutingConfig = DataRoutingConfig()
