"""DeepSpeed features zerospeed does not build fail with an error naming the feature, by attribute or import."""

from __future__ import annotations

import importlib

import pytest

import zerospeed
from zerospeed.runtime.unsupported import NotProvidedError, NotProvidedImportError


@pytest.mark.parametrize("owner, name, feature", [
    ("zerospeed", "init_inference", "DeepSpeed-Inference"),
    ("zerospeed", "InferenceEngine", "DeepSpeed-Inference"),
    ("zerospeed", "moe", "Mixture of Experts"),
    ("zerospeed.compression", "compress", "compression"),
    ("zerospeed.compression", "init_compression", "compression"),
    ("zerospeed", "autotuning", "autotuner"),
    ("zerospeed", "DeepSpeedHybridEngine", "hybrid engine"),
    ("zerospeed.runtime", "hybrid_engine", "hybrid engine"),
    ("zerospeed.runtime.zero", "TiledLinear", "tiled linear"),
    ("zerospeed.utils", "set_z3_leaf_modules", "leaf modules"),
    ("zerospeed.utils.groups", "_get_expert_parallel_group", "Mixture of Experts"),
])
def test_attribute_access_names_the_missing_feature(owner, name, feature):
    module = importlib.import_module(owner)
    with pytest.raises(NotProvidedError, match="zerospeed does not provide") as caught:
        getattr(module, name)
    assert feature in str(caught.value) and feature in caught.value.feature
    assert isinstance(caught.value, AttributeError)
    assert not hasattr(module, name)  # probes keep answering "absent" instead of raising


@pytest.mark.parametrize("statement, feature", [
    ("import zerospeed.moe", "Mixture of Experts"),
    ("from zerospeed.moe.layer import MoE", "Mixture of Experts"),
    ("from zerospeed import moe", "Mixture of Experts"),
    ("from zerospeed.inference.engine import InferenceEngine", "DeepSpeed-Inference"),
    ("import zerospeed.compression.compress", "compression"),
    ("from zerospeed.compression.compress import init_compression", "compression"),
    ("from zerospeed.autotuning import Autotuner", "autotuner"),
    ("import zerospeed.runtime.pipe.dualpipev", "DualPipeV"),
])
def test_imports_name_the_missing_feature(statement, feature):
    with pytest.raises(NotProvidedImportError, match=feature):
        exec(statement, {})


def test_unknown_names_stay_plain_attribute_errors():
    with pytest.raises(AttributeError) as caught:
        zerospeed.no_such_name  # noqa: B018
    assert not isinstance(caught.value, NotProvidedError)
    assert "no attribute 'no_such_name'" in str(caught.value)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("zerospeed.no_such_module")


def test_engine_names_of_unbuilt_features():
    from zerospeed.runtime.engine import Engine

    engine = Engine.__new__(Engine)
    torch_module_init(engine)
    with pytest.raises(NotProvidedError, match="offload_states"):
        engine.offload_states  # noqa: B018
    assert not hasattr(engine, "coalesce_grad_reduction")
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        engine.nothing_here  # noqa: B018


def torch_module_init(engine) -> None:
    """Only torch.nn.Module's bookkeeping: enough for attribute lookup without building an engine."""
    import torch

    torch.nn.Module.__init__(engine)
