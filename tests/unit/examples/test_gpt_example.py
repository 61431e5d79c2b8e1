"""The GPT example's model and data pieces (no engine, no process group)."""

import math
import os
import sys

import pytest
import torch

GPT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples", "gpt")
sys.path.insert(0, os.path.abspath(GPT_DIR))

from data import ByteWindows, build_datasets, load_corpus, split, stdlib_sources  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=256, seq_len=32, layers=2, dim=32, heads=4)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def test_forward_shapes_and_initial_loss():
    model = tiny_model()
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    assert model(x).shape == (4, 32, 256)
    loss = model(x, y)
    assert loss.shape == ()
    assert abs(loss.item() - math.log(256)) < 0.2


def test_shorter_sequences_and_too_long_rejected():
    model = tiny_model()
    assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 256)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_tied_head_shares_storage_and_counts_once():
    model = tiny_model()
    assert model.head.weight is model.tok_emb.weight
    assert model.head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names
    untied = tiny_model(tied=False)
    assert untied.num_params() == model.num_params() + 256 * 32


def test_gpt2_init_scales_residual_projections():
    model = tiny_model(dim=64, layers=4, heads=4)
    std = 0.02 / math.sqrt(2 * 4)
    assert abs(model.blocks[0].attn.proj.weight.std().item() - std) < 0.3 * std
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.005
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_causal_future_tokens_do_not_change_earlier_logits():
    model = tiny_model().eval()
    x = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0, 20:] = (x2[0, 20:] + 7) % 256
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_same_seed_same_weights():
    a, b = tiny_model(seed=5), tiny_model(seed=5)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_bad_heads_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(dim=30, heads=4)


def test_windows_are_shifted_by_one_and_deterministic():
    tokens = torch.arange(100, dtype=torch.uint8)
    ds = ByteWindows(tokens, seq=8)
    assert len(ds) == (100 - 1) // 8
    x, y = ds[3]
    assert x.dtype == torch.long and x.shape == (8,)
    assert x.tolist() == list(range(24, 32))
    torch.testing.assert_close(y[:-1], x[1:])
    assert y[-1].item() == 32
    x_again, y_again = ByteWindows(tokens, seq=8)[3]
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    last_x, last_y = ds[len(ds) - 1]
    assert last_y[-1].item() <= 99
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_puts_validation_at_the_end():
    tokens = torch.arange(200, dtype=torch.uint8)
    train, val = split(tokens, val_fraction=0.1)
    assert len(train) == 180 and len(val) == 20
    assert torch.equal(torch.cat([train, val]), tokens)


def test_data_path_reads_a_small_file(tmp_path):
    text = "def hello():\n    return 'world'\n" * 50
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    tokens = load_corpus(str(f))
    assert tokens.dtype == torch.uint8
    assert bytes(tokens.tolist()) == text.encode()
    train, val = build_datasets(str(f), seq=16, val_fraction=0.1)
    x, y = train[0]
    assert bytes(x.tolist()) == text.encode()[:16]
    assert bytes(y.tolist()) == text.encode()[1:17]
    assert len(val) >= 1


def test_data_directory_sorted_and_binary_skipped(tmp_path):
    (tmp_path / "b.txt").write_text("BBBB")
    (tmp_path / "a.txt").write_text("AAAA")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    assert bytes(load_corpus(str(tmp_path)).tolist()) == b"AAAABBBB"
    assert bytes(load_corpus(str(tmp_path), max_bytes=6).tolist()) == b"AAAABB"


def test_missing_data_path_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        load_corpus(str(tmp_path / "nope"))


def test_stdlib_corpus_is_cached_and_deterministic(tmp_path):
    files = stdlib_sources()
    assert files and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    first = load_corpus(cache_dir=tmp_path, max_bytes=4096)
    assert len(first) == 4096 and len(list(tmp_path.iterdir())) == 1
    second = load_corpus(cache_dir=tmp_path, max_bytes=4096)
    assert torch.equal(first, second)
