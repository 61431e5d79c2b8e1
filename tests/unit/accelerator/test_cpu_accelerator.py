"""The CPU accelerator and how the accelerator is chosen (env var or detection)."""

import pytest
import torch

import zerospeed.accelerator as accelerator_module
from zerospeed.accelerator import accelerator_choice, get_accelerator, set_accelerator
from zerospeed.accelerator.cpu import CpuAccelerator
from zerospeed.errors import ConfigError


@pytest.fixture
def fresh_accelerator():
    """Forget the process-wide accelerator before and after the test."""
    saved = accelerator_module._ACCELERATOR
    set_accelerator(None)
    yield
    set_accelerator(saved)


def test_cpu_names_backend_and_dtypes():
    acc = CpuAccelerator()
    assert acc.name == "cpu"
    assert acc.device_name() == "cpu" and acc.device_name(3) == "cpu"
    assert acc.device() == torch.device("cpu")
    assert acc.current_device_name() == "cpu"
    assert acc.communication_backend_name() == "gloo"
    assert acc.is_bf16_supported() and acc.is_fp16_supported()
    assert acc.device_count() >= 1 and acc.is_available()
    assert acc.on_accelerator(torch.ones(1))
    assert not acc.is_pinned(torch.ones(1))
    assert acc.pin_memory(torch.ones(2)).tolist() == [1.0, 1.0]
    acc.empty_cache()
    acc.synchronize()


def test_cpu_memory_numbers_are_positive():
    acc = CpuAccelerator()
    stats = acc.memory_stats()
    assert stats["allocated_bytes"] > 0
    assert stats["peak_allocated_bytes"] >= stats["allocated_bytes"] > 0
    assert stats["total_bytes"] > stats["allocated_bytes"]
    assert 0 < acc.available_memory() <= acc.total_memory()
    acc.reset_peak_memory_stats()
    assert acc.max_memory_allocated() > 0


def test_cpu_events_time_and_streams_do_nothing():
    acc = CpuAccelerator()
    start, end = acc.Event(enable_timing=True), acc.Event(enable_timing=True)
    start.record()
    torch.ones(64).sum()
    end.record()
    end.synchronize()
    assert start.elapsed_time(end) >= 0.0
    assert start.query()
    with pytest.raises(RuntimeError, match="both events recorded"):
        acc.Event().elapsed_time(end)
    stream = acc.Stream()
    with acc.stream(stream):
        value = torch.ones(2) * 2
    stream.wait_stream(acc.current_stream())
    stream.synchronize()
    assert stream.record_event().query()
    assert value.tolist() == [2.0, 2.0]


def test_bogus_env_value_is_a_config_error_naming_it(monkeypatch, fresh_accelerator):
    monkeypatch.setenv("ZEROSPEED_ACCELERATOR", "bogus")
    with pytest.raises(ConfigError, match=r"ZEROSPEED_ACCELERATOR='bogus'.*allowed: cpu, cuda"):
        get_accelerator()
    monkeypatch.delenv("ZEROSPEED_ACCELERATOR")
    monkeypatch.setenv("DS_ACCELERATOR", "tpu")
    with pytest.raises(ConfigError, match=r"DS_ACCELERATOR='tpu'"):
        accelerator_choice()


def test_deepspeed_env_var_is_honoured(monkeypatch, fresh_accelerator):
    monkeypatch.delenv("ZEROSPEED_ACCELERATOR", raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "CPU")
    name, why = accelerator_choice()
    assert name == "cpu" and "DS_ACCELERATOR" in why
    assert get_accelerator().name == "cpu"


def test_zerospeed_env_var_wins_over_deepspeed_one():
    assert accelerator_choice({"ZEROSPEED_ACCELERATOR": "cpu", "DS_ACCELERATOR": "cuda"}) == (
        "cpu", "ZEROSPEED_ACCELERATOR=cpu in the environment"
    )


def test_detection_without_env_vars():
    name, why = accelerator_choice({})
    assert name == ("cuda" if torch.cuda.is_available() else "cpu")
    assert why.startswith("detected")
