"""optimizer: {type, params, legacy_fusion}, with params checked per optimizer type.

Types follow DeepSpeed 0.19.8: its own optimizers (matched case-insensitively, stored
lower-case like DeepSpeed's `optimizer_name()`), else any `torch.optim` class (stored with
the class's spelling). DeepSpeed's extra Adam keys (`torch_adam`, `adam_w_mode`,
`fp32_optimizer_states`) are known parameters.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import model_validator

from ._base import Bool, ConfigModel, FreeDict, FrozenDict, bad_value
from .messages import did_you_mean
from .params import ParamError, anything, boolean, check_params, integer, number, pair, schema_from_signature

_LR = number(ge=0.0)
_ADAM_BASE = {
    "lr": _LR, "betas": pair(ge=0.0, lt=1.0), "eps": number(ge=0.0), "weight_decay": number(ge=0.0),
    "bias_correction": boolean, "amsgrad": boolean,
}
_ADAM = {
    **_ADAM_BASE,
    # DeepSpeed's own switches, popped before the optimizer class sees the rest
    "adam_w_mode": boolean, "torch_adam": boolean, "fp32_optimizer_states": boolean,
    # passed through to torch.optim.Adam(W) (torch_adam) or FusedAdam
    "foreach": anything, "set_grad_none": boolean, "maximize": boolean, "capturable": boolean,
    "differentiable": boolean, "fused": anything,
}
_SGD = {"lr": _LR, "momentum": number(ge=0.0), "dampening": number(), "weight_decay": number(ge=0.0),
        "nesterov": boolean, "maximize": boolean, "foreach": anything, "differentiable": boolean, "fused": anything}

DEEPSPEED_OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adam": _ADAM,
    "adamw": _ADAM,
    "lamb": {**_ADAM_BASE, "eps_inside_sqrt": boolean, "max_coeff": number(), "min_coeff": number()},
    "adagrad": {"lr": _LR, "eps": number(ge=0.0), "weight_decay": number(ge=0.0), "amsgrad": boolean,
                "lr_decay": number(ge=0.0), "initial_accumulator_value": number(ge=0.0), "foreach": anything,
                "maximize": boolean, "differentiable": boolean, "fused": anything,
                "fp32_optimizer_states": boolean},
    "lion": {"lr": _LR, "betas": pair(ge=0.0, lt=1.0), "weight_decay": number(ge=0.0), "set_grad_none": boolean,
             "fp32_optimizer_states": boolean},
    "muadam": {**_ADAM, "decoupled_wrapper": boolean},
    "muadamw": {**_ADAM, "decoupled_wrapper": boolean},
    "musgd": {**_SGD, "decoupled_wrapper": boolean},
    "muon": {**_ADAM, "momentum": number(ge=0.0), "ns_method": anything, "muon_lr": _LR, "adam_lr": _LR,
             "ns_steps": integer(ge=1)},
}

# optimizer types DeepSpeed dropped; we do not build them either
REMOVED_OPTIMIZERS = {
    name: "1-bit optimizers were removed in DeepSpeed 0.19; use Adam, AdamW or Lamb"
    for name in ("onebitadam", "zerooneadam", "onebitlamb")
}
_REJECTED_PARAMS = {
    "max_grad_norm": "not supported as an optimizer parameter; use the top-level 'gradient_clipping'",
}


@lru_cache(maxsize=None)
def torch_optimizers() -> dict[str, type]:
    """torch.optim optimizer classes by lower-case name (DeepSpeed's fallback types)."""
    import torch

    return {name.lower(): cls for name, cls in vars(torch.optim).items()
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}


def canonical_optimizer(name: str) -> str:
    """DeepSpeed spelling of an optimizer type; ValueError with a did-you-mean if unknown."""
    lowered = name.lower()
    if lowered in DEEPSPEED_OPTIMIZERS:
        return lowered
    if lowered in torch_optimizers():
        return torch_optimizers()[lowered].__name__
    if lowered in REMOVED_OPTIMIZERS:
        raise ValueError(f"not supported: {REMOVED_OPTIMIZERS[lowered]}")
    known = sorted(DEEPSPEED_OPTIMIZERS) + sorted(cls.__name__ for key, cls in torch_optimizers().items()
                                                  if key not in DEEPSPEED_OPTIMIZERS)
    raise ValueError(f"unknown optimizer type{did_you_mean(name, known)}; allowed (any case): {', '.join(known)}")


def optimizer_schema(canonical: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    if canonical in DEEPSPEED_OPTIMIZERS:
        return DEEPSPEED_OPTIMIZERS[canonical], ()
    schema, required = schema_from_signature(torch_optimizers()[canonical.lower()], skip=("self", "params"))
    return {**schema, "lr": _LR} if "lr" in schema else schema, required


class OptimizerConfig(ConfigModel):
    """The optimizer DeepSpeed builds from the config (ignored if the script passes one)."""

    section = "optimizer"
    type: str
    params: FreeDict = FrozenDict()
    legacy_fusion: Bool = False

    @model_validator(mode="after")
    def _check_type_and_params(self) -> "OptimizerConfig":
        try:
            canonical = canonical_optimizer(self.type)
        except ValueError as error:
            raise bad_value(self.type, str(error), "type") from None
        schema, required = optimizer_schema(canonical)
        try:
            params = check_params(f"optimizer type '{self.type}'", dict(self.params), schema, required,
                                  rejected=_REJECTED_PARAMS)
        except ParamError as error:
            raise bad_value(error.value, error.problem, f"params.{error.key}") from None
        object.__setattr__(self, "type", canonical)
        object.__setattr__(self, "params", params)
        return self
