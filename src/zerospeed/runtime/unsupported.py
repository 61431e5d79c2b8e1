"""DeepSpeed features zerospeed does not build, and the clear errors their names raise.

A script written for DeepSpeed that reaches for MoE, DeepSpeed-Inference, compression or
the autotuner must learn at once that zerospeed lacks the feature, not meet a bare
"no attribute" or a traceback from deep inside. Two doors lead there:

- attribute access (`zerospeed.init_inference`, `zerospeed.moe`) raises
  `NotProvidedError`, an `AttributeError`, so `hasattr()` and `getattr(x, name, None)`
  probes keep working and answer "absent";
- imports (`from zerospeed.moe.layer import MoE`) raise `NotProvidedImportError`, an
  `ImportError`, from a finder that is consulted only after the real ones found nothing.
"""

from __future__ import annotations

import importlib
import sys

# package-relative module path -> (feature, DeepSpeed's module)
UNSUPPORTED_MODULES: dict[str, str] = {
    "moe": "Mixture of Experts (deepspeed.moe)",
    "inference": "DeepSpeed-Inference (deepspeed.inference)",
    "model_implementations": "DeepSpeed-Inference model implementations (deepspeed.model_implementations)",
    "module_inject": "kernel injection and AutoTP (deepspeed.module_inject)",
    "compression": "model compression (deepspeed.compression)",
    "autotuning": "the autotuner (deepspeed.autotuning)",
    "sequence": "Ulysses sequence parallelism (deepspeed.sequence)",
    "linear": "optimized LoRA linear layers (deepspeed.linear)",
    "compile": "DeepCompile (deepspeed.compile)",
    "runtime.hybrid_engine": "the RLHF hybrid engine (deepspeed.runtime.hybrid_engine)",
    "runtime.data_pipeline": "data efficiency: curriculum learning, random-LTD (deepspeed.runtime.data_pipeline)",
    "runtime.tensor_parallel": "AutoTP tensor-parallel training (deepspeed.runtime.tensor_parallel)",
    "runtime.domino": "Domino tensor-parallel overlap (deepspeed.runtime.domino)",
    "runtime.pipe.dualpipev": "the DualPipeV pipeline schedule (deepspeed.runtime.pipe.dualpipev)",
}

# modules zerospeed provides inside an unbuilt feature's package: DeepSpeed 0.19.8's own
# `deepspeed.compression` is no more than the `helper` shim (recursive_getattr / recursive_setattr)
PROVIDED_MODULES: frozenset[str] = frozenset({"compression", "compression.helper"})

# (package, attribute) -> feature, for names that are not modules
UNSUPPORTED_ATTRIBUTES: dict[tuple[str, str], str] = {
    ("zerospeed", "init_inference"): "DeepSpeed-Inference (deepspeed.init_inference)",
    ("zerospeed", "default_inference_config"): "DeepSpeed-Inference (deepspeed.default_inference_config)",
    ("zerospeed", "InferenceEngine"): "DeepSpeed-Inference (deepspeed.InferenceEngine)",
    ("zerospeed", "DeepSpeedInferenceConfig"): "DeepSpeed-Inference (deepspeed.DeepSpeedInferenceConfig)",
    ("zerospeed", "DeepSpeedHybridEngine"): "the RLHF hybrid engine (deepspeed.DeepSpeedHybridEngine)",
    ("zerospeed", "DeepSpeedTransformerLayer"): "fused transformer kernels (deepspeed.DeepSpeedTransformerLayer)",
    ("zerospeed", "DeepSpeedTransformerConfig"): "fused transformer kernels (deepspeed.DeepSpeedTransformerConfig)",
    ("zerospeed", "replace_transformer_layer"): "kernel injection (deepspeed.replace_transformer_layer)",
    ("zerospeed", "set_autotp_mode"): "AutoTP (deepspeed.set_autotp_mode)",
    ("zerospeed", "tp_model_init"): "AutoTP tensor-parallel training (deepspeed.tp_model_init)",
    ("zerospeed", "DualPipeVEngine"): "the DualPipeV pipeline schedule (deepspeed.DualPipeVEngine)",
    ("zerospeed", "DualPipeVModule"): "the DualPipeV pipeline schedule (deepspeed.DualPipeVModule)",
    ("zerospeed.runtime.zero", "TiledLinear"): "ZeRO-3 tiled linear layers (deepspeed.zero.TiledLinear)",
    ("zerospeed.runtime.zero", "TiledLinearReturnBias"): "ZeRO-3 tiled linear layers (deepspeed.zero.TiledLinearReturnBias)",
    ("zerospeed.runtime.zero", "MiCS_Init"): "MiCS sharding (deepspeed.zero.MiCS_Init)",
    ("zerospeed.utils", "set_z3_leaf_modules"): "ZeRO-3 leaf modules (deepspeed.utils.set_z3_leaf_modules)",
    ("zerospeed.utils", "unset_z3_leaf_modules"): "ZeRO-3 leaf modules (deepspeed.utils.unset_z3_leaf_modules)",
    ("zerospeed.utils", "set_z3_leaf_module"): "ZeRO-3 leaf modules (deepspeed.utils.set_z3_leaf_module)",
    ("zerospeed.utils", "set_z3_leaf_modules_by_name"): "ZeRO-3 leaf modules (deepspeed.utils.set_z3_leaf_modules_by_name)",
    ("zerospeed.utils", "set_z3_leaf_modules_by_suffix"): "ZeRO-3 leaf modules (deepspeed.utils.set_z3_leaf_modules_by_suffix)",
}


class NotProvidedError(AttributeError):
    """A DeepSpeed name whose feature zerospeed does not build (raised on attribute access)."""

    def __init__(self, message: str, feature: str) -> None:
        super().__init__(message)
        self.feature = feature


class NotProvidedImportError(ImportError):
    """A DeepSpeed module whose feature zerospeed does not build (raised on import)."""

    def __init__(self, message: str, feature: str) -> None:
        super().__init__(message)
        self.feature = feature


def _message(feature: str, where: str) -> str:
    return (f"zerospeed does not provide {feature}: `{where}` has no zerospeed counterpart. "
            "Run this part with DeepSpeed itself, or leave it out of the zerospeed run.")


def unsupported_module_feature(fullname: str) -> str | None:
    """The feature a `zerospeed.`-prefixed module path belongs to, if zerospeed does not build it."""
    if not fullname.startswith("zerospeed."):
        return None
    relative = fullname[len("zerospeed."):]
    if relative in PROVIDED_MODULES:
        return None
    for prefix, feature in UNSUPPORTED_MODULES.items():
        if relative == prefix or relative.startswith(prefix + "."):
            return feature
    return None


def attribute_error(package: str, name: str) -> AttributeError:
    """The error for `package.name` being absent: a `NotProvidedError` for a known DeepSpeed name."""
    feature = UNSUPPORTED_ATTRIBUTES.get((package, name)) or unsupported_module_feature(f"{package}.{name}")
    if feature is not None:
        return NotProvidedError(_message(feature, f"{package}.{name}"), feature)
    return AttributeError(f"module {package!r} has no attribute {name!r}")


def submodule_attribute(package: str, name: str):
    """`package.name` as a lazily imported submodule, for a package's `__getattr__`.

    An absent submodule raises `attribute_error` (an AttributeError, so `hasattr` works);
    a submodule that exists but fails inside its own imports shows that failure.
    """
    fullname = f"{package}.{name}"
    if name.startswith("__") or unsupported_module_feature(fullname) is not None:
        raise attribute_error(package, name)
    try:
        return importlib.import_module(fullname)
    except ModuleNotFoundError as error:
        if error.name != fullname:
            raise
        raise attribute_error(package, name) from None


class _NotProvidedFinder:  # a meta path finder needs only find_spec; importlib.abc costs import time
    """Answers imports of unbuilt DeepSpeed modules under `zerospeed.` with a clear error."""

    def find_spec(self, fullname, path=None, target=None):
        feature = unsupported_module_feature(fullname)
        if feature is None:
            return None
        # An ImportError, not ModuleNotFoundError: `from zerospeed import moe` would swallow the
        # latter and replace this message with a bare "cannot import name".
        raise NotProvidedImportError(_message(feature, fullname), feature)


def install_import_hook() -> None:
    """Append the finder to sys.meta_path once (last, so a real module always wins)."""
    if not any(isinstance(finder, _NotProvidedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_NotProvidedFinder())
