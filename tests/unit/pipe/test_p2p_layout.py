"""Activation headers: what a stage sends ahead of its tensors, and the errors they enable."""

import pytest
import torch

from zerospeed.pipe.p2p import PipelineError, decode, describe, encode, layout_of


def test_header_round_trips_tuples_of_mixed_tensors():
    h = torch.randn(2, 5, 12, requires_grad=True)
    value = (h * 2, torch.ones(2, 5, dtype=torch.int64), torch.zeros(2, 5, 1), torch.ones(3, dtype=torch.bool))
    layout = layout_of(value)
    assert decode(encode(layout)) == layout
    assert describe(layout) == "((2, 5, 12) float32 (grad), (2, 5) int64, (2, 5, 1) float32, (3,) bool)"
    single = layout_of(torch.zeros(4, 3, dtype=torch.bfloat16))
    assert decode(encode(single)) == single and describe(single) == "(4, 3) bfloat16"


def test_outputs_that_cannot_travel_are_named():
    with pytest.raises(PipelineError, match=r"tensor or a tuple of tensors.*dict"):
        layout_of({"h": torch.zeros(1)})
    with pytest.raises(PipelineError, match="header slots"):
        encode(layout_of(tuple(torch.zeros(1) for _ in range(30))))
