"""Pure pieces of benchmarks/common.py: the ZeRO formula, the peers' data and the storage counter."""

import os
import sys

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "benchmarks")))

from common import StorageCounter, make_batches, theory_bytes_per_param  # noqa: E402


def test_zero_formula_fp32_and_mixed():
    assert [theory_bytes_per_param(s, "fp32", 2) for s in range(4)] == [16, 12, 10, 8]
    assert [theory_bytes_per_param(s, "bf16", 2) for s in range(4)] == [16, 10, 9, 8]


def test_markov_batches_identical_across_calls_and_ranks_split_rows():
    a = make_batches(64, 8, 2, 1, 2, seed=1, world=2, rank=0)
    b = make_batches(64, 8, 2, 1, 2, seed=1, world=2, rank=0)
    other = make_batches(64, 8, 2, 1, 2, seed=1, world=2, rank=1)
    x, y = a[1][0]
    assert x.shape == (2, 8) and torch.equal(x, b[1][0][0])
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    assert not torch.equal(x, other[1][0][0])


def test_storage_counter_counts_shared_storage_once():
    base = torch.zeros(10)
    counter = StorageCounter()
    counter.add("params", base)
    counter.add("params", base[2:5])
    counter.add("states", {"m": torch.zeros(3), "v": [torch.zeros(5, dtype=torch.float64)]})
    assert counter.bytes == {"params": 40, "states": 12 + 40}
