"""DeepSpeed's `CheckpointFunction.apply(function, all_outputs, *args)`: the same outputs and
gradients as running the segment without checkpointing, dropout masks included."""

from __future__ import annotations

import pytest
import torch

from zerospeed import checkpointing
from zerospeed.checkpointing import CheckpointFunction, get_cuda_rng_tracker


class Segment(torch.nn.Module):
    """Dropout from the default generator and from the model-parallel tracker; a non-tensor
    argument and outputs that are an integer tensor and a plain Python value."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(6, 6)
        self.second = torch.nn.Linear(6, 6)
        self.calls = 0

    def forward(self, hidden, mask, scale, residual):
        self.calls += 1
        out = torch.nn.functional.dropout(self.first(hidden), p=0.5, training=True) * scale
        with get_cuda_rng_tracker().fork():
            out = torch.nn.functional.dropout(self.second(out), p=0.3, training=True)
        out = out * mask + residual
        return out, out.argmax(dim=-1), "tag"


def _inputs(seed: int):
    torch.manual_seed(seed)
    hidden = torch.randn(4, 6, requires_grad=True)
    residual = torch.randn(4, 6, requires_grad=True)
    mask = (torch.rand(4, 6) > 0.2).float()
    return hidden, mask, residual


def _run(checkpointed: bool):
    torch.manual_seed(0)
    segment = Segment()
    checkpointing.model_parallel_cuda_manual_seed(1234)
    hidden, mask, residual = _inputs(1)
    torch.manual_seed(7)
    if checkpointed:
        all_outputs: list = []
        returned = CheckpointFunction.apply(segment, all_outputs, hidden, mask, 2.0, residual)
        out, index, tag = all_outputs
        assert len(returned) == 2 and returned[0] is out and returned[1] is index  # tensors only, same objects
    else:
        out, index, tag = segment(hidden, mask, 2.0, residual)
    after_forward = torch.rand(3)  # the generator moved on as far in both runs
    (out.square().sum() + out[0, 0]).backward()
    after_backward = torch.rand(3)  # recomputation left the generator where backward found it
    grads = {name: p.grad.clone() for name, p in segment.named_parameters()}
    return {
        "out": out.detach(), "index": index, "tag": tag, "grads": grads, "hidden": hidden.grad, "residual": residual.grad,
        "rng": (after_forward, after_backward), "calls": segment.calls,
    }


def test_same_outputs_and_gradients_as_without_checkpointing():
    plain, ours = _run(False), _run(True)
    assert torch.equal(ours["out"], plain["out"]) and torch.equal(ours["index"], plain["index"])
    assert ours["tag"] == plain["tag"] == "tag"
    assert set(ours["grads"]) == {"first.weight", "first.bias", "second.weight", "second.bias"}
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(ours["grads"][name], grad, rtol=0, atol=0)
    torch.testing.assert_close(ours["hidden"], plain["hidden"], rtol=0, atol=0)
    torch.testing.assert_close(ours["residual"], plain["residual"], rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(ours["rng"], plain["rng"]))
    assert (plain["calls"], ours["calls"]) == (1, 2)  # forward once, recomputed once in backward
    assert ours["index"].requires_grad is False


def test_a_single_tensor_output_and_no_grad_forward():
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    all_outputs: list = []
    out = CheckpointFunction.apply(layer, all_outputs, x)
    assert all_outputs == [out] and out.grad_fn is not None
    out.sum().backward()
    expected = torch.ones(2, 3) @ layer.weight
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 2) @ x.detach())
    with torch.no_grad():
        assert CheckpointFunction.apply(layer, [], x).grad_fn is None


def test_torch_autograd_grad_is_refused():
    x = torch.randn(2, 3, requires_grad=True)
    out = CheckpointFunction.apply(torch.nn.Linear(3, 3), [], x)
    with pytest.raises(RuntimeError, match="backward"):
        torch.autograd.grad(out.sum(), x)


def test_cpu_checkpointing_option_gives_the_same_gradients():
    layer = torch.nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    expected = x.grad.clone(), layer.weight.grad.clone()
    x.grad, layer.weight.grad = None, None
    checkpointing.configure(None, checkpoint_in_cpu=True)
    try:
        (CheckpointFunction.apply(layer, [], x) ** 2).sum().backward()
    finally:
        checkpointing.configure(None)
    torch.testing.assert_close(x.grad, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(layer.weight.grad, expected[1], rtol=0, atol=0)


def test_deepspeed_path():
    from zerospeed.runtime.activation_checkpointing.checkpointing import CheckpointFunction as via_deepspeed_path

    assert via_deepspeed_path is CheckpointFunction
