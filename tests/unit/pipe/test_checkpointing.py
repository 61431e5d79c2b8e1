"""zerospeed.checkpointing: DeepSpeed's API names, same gradients as no checkpointing, honest options."""

import pytest
import torch

from zerospeed import checkpointing


@pytest.fixture(autouse=True)
def fresh_options():
    checkpointing.configure(None)
    yield
    checkpointing.configure(None)


def _grads(use_checkpoint: bool):
    torch.manual_seed(0)
    embed, block = torch.nn.Embedding(10, 6), torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Dropout(0.3), torch.nn.GELU())
    tokens = torch.randint(0, 10, (3, 4))

    def segment(t):  # inputs need no gradient: only a non-reentrant checkpoint trains `embed`
        return block(embed(t))

    torch.manual_seed(1)
    out = checkpointing.checkpoint(segment, tokens) if use_checkpoint else segment(tokens)
    out.pow(2).sum().backward()
    return [p.grad.clone() for p in [*embed.parameters(), *block.parameters()]]


@pytest.mark.parametrize("options", [{}, {"checkpoint_in_cpu": True}, {"synchronize": True}, {"profile": True}])
def test_checkpoint_gives_the_same_gradients_with_dropout(options):
    checkpointing.configure(None, **options)
    for plain, recomputed in zip(_grads(False), _grads(True)):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=0)


def test_tuple_outputs_and_non_tensor_arguments():
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    out, doubled = checkpointing.checkpoint(lambda t, k: (layer(t) * k, t * 2), x, 3.0)
    (out.sum() + doubled.sum()).backward()
    assert layer.weight.grad is not None and x.grad is not None
    checkpointing.configure(None, synchronize=True)
    out, doubled = checkpointing.checkpoint(lambda t: (layer(t), t * 2), x)
    out.sum().backward()


def test_configure_from_a_deepspeed_config_and_keyword_overrides():
    config = {"train_batch_size": 1, "activation_checkpointing": {"cpu_checkpointing": True, "number_checkpoints": 4, "profile": True}}
    checkpointing.configure(None, deepspeed_config=config, profile=False)
    assert checkpointing.is_configured()
    assert checkpointing._options.cpu_checkpointing and checkpointing._options.number_checkpoints == 4
    assert not checkpointing._options.profile
    checkpointing.reset()
    checkpointing.set_num_layers(7)
    assert checkpointing._options.number_checkpoints == 7
    assert checkpointing.non_reentrant_checkpoint(torch.nn.Linear(2, 2), torch.ones(1, 2)).shape == (1, 2)


def test_options_this_build_cannot_honour_warn_naming_the_key(monkeypatch):
    seen = []
    monkeypatch.setattr(checkpointing, "warn_once", seen.append)  # warn_once itself dedupes per message
    checkpointing.configure(None, partition_activations=True, contiguous_checkpointing=True, num_checkpoints=2)
    assert [m.split("=")[0] for m in seen] == [
        "activation_checkpointing.partition_activations", "activation_checkpointing.contiguous_memory_optimization",
    ]
    assert all("not supported by this zerospeed build" in m for m in seen)
    seen.clear()
    checkpointing.configure(None, checkpoint_in_cpu=True, synchronize=True, profile=True)
    assert seen == []  # honoured options stay quiet


def test_rng_tracker_forks_a_separate_stream():
    checkpointing.model_parallel_cuda_manual_seed(5)
    tracker = checkpointing.get_cuda_rng_tracker()
    before = torch.get_rng_state()
    with tracker.fork():
        first = torch.rand(2)
    assert torch.equal(torch.get_rng_state(), before)
    with tracker.fork():
        second = torch.rand(2)
    assert not torch.equal(first, second)
    with pytest.raises(ValueError):
        tracker.add("model-parallel-rng", 99)
