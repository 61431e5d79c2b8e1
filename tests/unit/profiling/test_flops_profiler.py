"""FLOPs profiler: exact analytic counts (Linear, matmul family, conv, a transformer block), tree sums, API."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zerospeed.profiling.flops_profiler import FlopsProfiler, get_model_profile
from zerospeed.profiling.flops_profiler.profiler import get_module_flops, get_module_macs


def profile(model, *args, **kwargs):
    return get_model_profile(model, args=list(args), kwargs=kwargs, print_profile=False, as_string=False, warm_up=0)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_exact(bias):
    model = nn.Linear(7, 5, bias=bias)
    flops, macs, params = profile(model, torch.randn(3, 4, 7))
    assert macs == 3 * 4 * 7 * 5
    assert flops == 2 * macs  # bias additions are not counted (DeepSpeed's Linear rule)
    assert params == 7 * 5 + (5 if bias else 0)


class MatmulFamily(nn.Module):
    def forward(self, a, b):
        x = a @ b                                        # (2,3,4) @ (2,4,6)
        y = torch.bmm(a, b)
        z = torch.einsum("bij,bjk->bik", a, b)
        w = torch.matmul(a[0], b[0])                      # (3,4) @ (4,6)
        return x + y + z + w


def test_matmul_bmm_einsum_exact():
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 6)
    flops, macs, params = profile(MatmulFamily(), a, b)
    per_batched = 2 * 3 * 4 * 6
    assert macs == 3 * per_batched + 3 * 4 * 6
    assert flops == 2 * macs and params == 0


def test_conv2d_exact():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, groups=1)
    flops, macs, _ = profile(conv, torch.randn(2, 3, 10, 10))
    out_positions = 2 * 5 * 5
    assert macs == out_positions * 8 * 3 * 3 * 3
    assert flops == 2 * macs


class Block(nn.Module):
    """Pre-LN transformer block: LN, qkv, causal SDPA, proj, LN, MLP(4x, GELU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def test_transformer_block_exact_and_tree_sums():
    B, T, D, H = 2, 8, 16, 4
    block = Block(D, H)
    profiler = FlopsProfiler(block)
    profiler.start_profile()
    block(torch.randn(B, T, D))
    profiler.stop_profile()
    linear_macs = B * T * D * (3 * D + D + 4 * D + 4 * D)
    attention_macs = 2 * B * T * T * D          # QK^T and PV over all heads (no causal discount)
    norms = 2 * 5 * B * T * D                     # two affine LayerNorms, 5 FLOPs per element
    gelu = B * T * 4 * D
    assert profiler.get_total_macs() == linear_macs + attention_macs
    assert profiler.get_total_flops() == 2 * (linear_macs + attention_macs) + norms + gelu
    assert profiler.get_total_params() == sum(p.numel() for p in block.parameters())
    assert block.fc.__flops__ == 2 * B * T * D * 4 * D and block.ln1.__flops__ == 5 * B * T * D
    # the tree: every module = its own ops + its children; the root's own ops are attention + GELU
    for module in block.modules():
        assert get_module_flops(module) == module.__flops__ + sum(get_module_flops(c) for c in module.children())
    children = sum(get_module_flops(c) for c in block.children())
    assert block.__flops__ == 2 * attention_macs + gelu
    assert children + block.__flops__ == profiler.get_total_flops()
    assert get_module_macs(block) == profiler.get_total_macs()
    assert profiler.get_total_duration() > 0
    profiler.end_profile()
    assert not hasattr(block.fc, "__flops__") and not block.fc._forward_hooks and not block._forward_pre_hooks


def test_norms_and_activations():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(6)
            self.gn = nn.GroupNorm(2, 6, affine=False)
            self.rms = nn.RMSNorm(6)

        def forward(self, x):
            x = self.gn(self.bn(x))
            return torch.softmax(F.silu(F.relu(self.rms(x.transpose(1, 2)))), dim=-1)

    net = Net().train()
    x = torch.randn(4, 6, 5)
    profiler = FlopsProfiler(net)
    profiler.start_profile()
    net(x)
    n = x.numel()
    assert net.bn.__flops__ == 5 * n        # training batch norm with affine
    assert net.gn.__flops__ == 4 * n        # no affine
    assert net.rms.__flops__ == 4 * n       # weight present
    assert net.__flops__ == 3 * n           # relu, silu, softmax: 1 per element, in the root
    assert profiler.get_total_macs() == 0
    profiler.end_profile()


def test_get_model_profile_strings_input_shape_and_report(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    flops, macs, params = get_model_profile(model, input_shape=(2, 8), print_profile=True, module_depth=1, top_modules=2)
    assert (flops, macs, params) == ("800 ", "384 MACs", "212")  # DeepSpeed's string formats
    text = capsys.readouterr().out
    assert "DeepSpeed Flops Profiler" in text and "Detailed Profile" in text and "(0): Linear(" in text
    out = tmp_path / "sub" / "profile.txt"
    get_model_profile(model, input_shape=(2, 8), output_file=str(out), detailed=False)
    report = out.read_text()
    assert "fwd flops per rank" in report and "Detailed Profile" not in report
    assert model[0]._forward_hooks == {} and not hasattr(model, "__flops__")


def test_ignore_modules_counts_in_the_parent():
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4))
    profiler = FlopsProfiler(model)
    profiler.start_profile(ignore_list=[nn.Linear])
    model(torch.randn(3, 8))
    assert model.__flops__ == 2 * 3 * (8 * 16 + 16 * 4) and model[0].__flops__ == 0
    profiler.end_profile()


def test_forward_exception_leaves_no_counting_mode_behind():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("boom")

    model = Boom()
    profiler = FlopsProfiler(model)
    profiler.start_profile()
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(2, 4))
    assert profiler._modes is None and not profiler._stack
    model.lin(torch.randn(2, 4))  # profiled again cleanly
    assert model.lin.__flops__ == 2 * (2 * 2 * 4 * 4)  # both forwards counted
    profiler.end_profile()


def test_deepspeed_import_path():
    import zerospeed.profiling.flops_profiler as fp

    assert callable(fp.get_model_profile) and fp.FlopsProfiler is FlopsProfiler
    assert fp.number_to_string(2.5e9) == "2.5 G" and fp.params_to_string(3e9) == "3 B"
