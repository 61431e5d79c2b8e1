"""Build the optimizer a config's `optimizer` section names, with DeepSpeed's semantics.

Types (case-insensitive, as DeepSpeed): Adam, AdamW, Adagrad, Lamb, Lion, and any torch.optim
class by name (SGD, RMSprop, ...), which DeepSpeed also accepts. What DeepSpeed does and we
replicate:

- "Adam" decouples weight decay (AdamW behaviour) unless `adam_w_mode: false`; "AdamW" always
  does. `adam_w_mode`, `torch_adam` and `fp32_optimizer_states` are read and removed before
  the optimizer is built; `torch_adam: true` gives torch.optim.Adam/AdamW themselves.
- With the optimizer offloaded to CPU, Adam/Adagrad/Lion become DeepSpeed's CPU classes.
- `max_grad_norm` is refused: clipping is the top-level `gradient_clipping`.

Unlike DeepSpeed, an unknown type or parameter, or a parameter of the wrong type, raises
ConfigError naming the key, the value and what is allowed, before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from zerospeed.errors import ConfigError
from zerospeed.ops.adagrad import DeepSpeedCPUAdagrad
from zerospeed.ops.adam import DeepSpeedCPUAdam, FusedAdam, _flat_params, torch_implementation_kwargs
from zerospeed.ops.lamb import FusedLamb
from zerospeed.ops.lion import DeepSpeedCPULion, FusedLion

__all__ = [
    "ADAM_OPTIMIZER", "ADAMW_OPTIMIZER", "ADAGRAD_OPTIMIZER", "LAMB_OPTIMIZER", "LION_OPTIMIZER", "SGD_OPTIMIZER",
    "ZERO_SUPPORTED_OPTIMIZERS", "build_optimizer", "is_zero_supported_optimizer", "resolve_optimizer",
]

ADAM_OPTIMIZER = "adam"
ADAMW_OPTIMIZER = "adamw"
ADAGRAD_OPTIMIZER = "adagrad"
LAMB_OPTIMIZER = "lamb"
LION_OPTIMIZER = "lion"
SGD_OPTIMIZER = "sgd"
TORCH_ADAM_PARAM = "torch_adam"
ADAM_W_MODE = "adam_w_mode"
ADAM_W_MODE_DEFAULT = True

# DeepSpeed's ZeRO "tested" list (runtime/zero/utils.py), by exact type as DeepSpeed checks it.
# Others (SGD, Lamb, user classes) run under ZeRO only with zero_allow_untested_optimizer.
ZERO_SUPPORTED_OPTIMIZERS: tuple[type, ...] = (
    torch.optim.Adam, torch.optim.AdamW, FusedAdam, DeepSpeedCPUAdam,
    torch.optim.Adagrad, DeepSpeedCPUAdagrad, DeepSpeedCPULion, FusedLion,
)

# torch classes with a fused CPU/CUDA kernel: built fused by default (see torch_implementation_kwargs).
_TORCH_FUSED_CLASSES = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad)
_OWN_TYPES = ("Adam", "AdamW", "Adagrad", "Lamb", "Lion")
_PATH = "optimizer"

# DeepSpeed types we do not build yet; "muon" must not fall through to torch.optim.Muon, whose
# semantics differ (DeepSpeed pairs Muon with an auxiliary Adam for non-matrix parameters).
_NOT_BUILT_TYPES = ("onebitadam", "zerooneadam", "onebitlamb", "muadam", "muadamw", "musgd", "muon")

# Parameters that must be real numbers when present (JSON typos like "lr": "fast").
_NUMERIC_PARAMS = ("lr", "eps", "weight_decay", "momentum", "dampening", "max_coeff", "min_coeff", "lr_decay")


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """torch.optim's optimizer classes by lower-cased name."""
    found = {}
    for name in dir(torch.optim):
        value = getattr(torch.optim, name)
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer:
            found[name.lower()] = value
    return found


def _section(config: Any) -> tuple[Any, dict[str, Any]]:
    """(type, params) from a config section object or a plain {'type', 'params'} dict."""
    if config is None:
        raise ConfigError(f"{_PATH}: no optimizer configured; pass one to initialize() or add an 'optimizer' section")
    if isinstance(config, dict):
        kind, params = config.get("type"), config.get("params")
    else:
        kind, params = getattr(config, "type", None), getattr(config, "params", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{_PATH}.type = {kind!r}: expected the optimizer's name; allowed: {', '.join(_OWN_TYPES)}, "
                          "SGD or any torch.optim class")
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{_PATH}.params = {params!r}: expected an object of optimizer arguments")
    return kind, dict(params)


def _accepted_names(cls: type) -> list[str]:
    signature = inspect.signature(cls.__init__)
    skip = {"self", "params", "model_params"}
    return [
        name for name, p in signature.parameters.items()
        if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def _check_params(kind: str, cls: type, params: dict[str, Any], consumed: Iterable[str]) -> None:
    accepted = _accepted_names(cls)
    allowed = sorted({*accepted, *consumed})
    for key, value in params.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{_PATH}.params.{key} = {value!r}: unknown parameter for optimizer type '{kind}'{hint}; "
                f"allowed: {', '.join(allowed)}"
            )
        if key in _NUMERIC_PARAMS and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{_PATH}.params.{key} = {value!r}: expected a number")
        if key == "betas" and not (
            isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in value)
        ):
            raise ConfigError(f"{_PATH}.params.betas = {value!r}: expected two numbers, e.g. [0.9, 0.999]")
    if "betas" in params:
        params["betas"] = tuple(params["betas"])


def _adam_choice(name: str, params: dict[str, Any], cpu_offload: bool) -> tuple[type, dict[str, Any]]:
    adam_w_mode = params.pop(ADAM_W_MODE, ADAM_W_MODE_DEFAULT)
    decoupled = name == ADAMW_OPTIMIZER or bool(adam_w_mode)
    torch_adam = params.pop(TORCH_ADAM_PARAM, False)
    fp32_optimizer_states = params.pop("fp32_optimizer_states", None)
    if torch_adam:
        return (torch.optim.AdamW if decoupled else torch.optim.Adam), {}
    if cpu_offload:
        states = True if fp32_optimizer_states is None else fp32_optimizer_states
        return DeepSpeedCPUAdam, {"adamw_mode": decoupled, "fp32_optimizer_states": states}
    return FusedAdam, {"adam_w_mode": decoupled}


def resolve_optimizer(optimizer_config: Any, *, cpu_offload: bool = False) -> tuple[type, dict[str, Any]]:
    """The optimizer class and its keyword arguments for a config, validated; builds nothing.

    Lets the config layer check an `optimizer` section before any parameter exists.
    """
    kind, params = _section(optimizer_config)
    if "max_grad_norm" in params:
        raise ConfigError(
            f"{_PATH}.params.max_grad_norm = {params['max_grad_norm']!r}: not supported as an optimizer parameter; "
            "use the top-level 'gradient_clipping' instead"
        )
    name = kind.lower()
    consumed: tuple[str, ...] = ()
    extra: dict[str, Any] = {}
    if name in (ADAM_OPTIMIZER, ADAMW_OPTIMIZER):
        consumed = (ADAM_W_MODE, TORCH_ADAM_PARAM, "fp32_optimizer_states")
        cls, extra = _adam_choice(name, params, cpu_offload)
    elif name == ADAGRAD_OPTIMIZER:
        cls = DeepSpeedCPUAdagrad if cpu_offload else torch.optim.Adagrad
    elif name == LAMB_OPTIMIZER:
        cls = FusedLamb
    elif name == LION_OPTIMIZER:
        cls = DeepSpeedCPULion if cpu_offload else FusedLion
    elif name in _NOT_BUILT_TYPES:
        raise ConfigError(
            f"{_PATH}.type = {kind!r}: a DeepSpeed optimizer type zerospeed does not support yet; "
            f"allowed: {', '.join(_OWN_TYPES)}, SGD or any torch.optim class"
        )
    elif name in _torch_optimizers():
        cls = _torch_optimizers()[name]
    else:
        torch_names = sorted(c.__name__ for c in _torch_optimizers().values() if c.__name__ not in _OWN_TYPES)
        choices = [*_OWN_TYPES, *torch_names]
        close = difflib.get_close_matches(kind, choices, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{_PATH}.type = {kind!r}: unknown optimizer type{hint}; allowed: {', '.join(choices)}")
    _check_params(kind, cls, params, consumed)
    return cls, {**params, **extra}


def build_optimizer(
    optimizer_config: Any, param_groups: Iterable[Any], *, cpu_offload: bool = False
) -> torch.optim.Optimizer:
    """The optimizer `optimizer_config` (`.type`/`.params` or a dict) describes, over `param_groups`.

    `param_groups` is what torch optimizers take: tensors or dicts with "params". Our own
    classes pick torch's fused kernels where they exist; torch classes (SGD, Adagrad,
    torch_adam) get the same choice unless the config sets `foreach`/`fused`.
    `cpu_offload=True` builds DeepSpeed's CPU classes, as ZeRO-Offload does.
    """
    cls, kwargs = resolve_optimizer(optimizer_config, cpu_offload=cpu_offload)
    items, tensors = _flat_params(param_groups)
    if cls in _TORCH_FUSED_CLASSES and "foreach" not in kwargs and "fused" not in kwargs:
        kwargs.update(torch_implementation_kwargs(tensors))
    elif cls.__module__.startswith("torch.") and "foreach" in _accepted_names(cls) and "foreach" not in kwargs:
        kwargs["foreach"] = True
    try:
        return cls(items, **kwargs)
    except (TypeError, ValueError) as error:
        kind = _section(optimizer_config)[0]
        raise ConfigError(f"{_PATH}.params for type '{kind}' ({cls.__name__}): {error}") from error


def is_zero_supported_optimizer(optimizer: Any) -> bool:
    """Whether ZeRO runs this optimizer without `zero_allow_untested_optimizer` (DeepSpeed's list)."""
    return type(optimizer) in ZERO_SUPPORTED_OPTIMIZERS
