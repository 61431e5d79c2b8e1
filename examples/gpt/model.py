"""A small GPT-style decoder (nanoGPT-sized) used by the example trainer and the benchmarks.

Token + position embeddings, N pre-LN blocks (causal self-attention through
`F.scaled_dot_product_attention(is_causal=True)`, MLP 4x GELU), final LayerNorm and an LM head
tied to the token embedding. Linear layers carry no bias. Init follows GPT-2: N(0, 0.02)
everywhere, residual projections scaled by 1/sqrt(2 * layers).

The module layout and init order match /work/shared/bench/train_gpt.py, so the same seed gives
the same weights as the peers' benchmark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    layers: int = 4
    dim: int = 128
    heads: int = 4
    tied: bool = True

    def __post_init__(self) -> None:
        if self.dim % self.heads != 0:
            raise ValueError(f"dim={self.dim} must be divisible by heads={self.heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only LM: forward(idx) -> logits; forward(idx, targets) -> mean cross-entropy loss."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim)
        self.pos_emb = nn.Embedding(config.seq_len, config.dim)
        self.blocks = nn.ModuleList([Block(config.dim, config.heads) for _ in range(config.layers)])
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tied:
            self.head.weight = self.tok_emb.weight
        self.apply(_init_weights)
        residual_std = 0.02 / math.sqrt(2 * config.layers)
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.out.weight")):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    def num_params(self) -> int:
        """Unique parameter count: `parameters()` already yields a tied weight once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.config.seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's seq_len {self.config.seq_len}")
        pos = torch.arange(t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits
        # float() keeps the loss in fp32 when the model runs in bf16/fp16
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, new_tokens: int, temperature: float = 1.0) -> torch.Tensor:
        """Sample `new_tokens` tokens after `idx` (B, T); returns (B, T + new_tokens)."""
        for _ in range(new_tokens):
            logits = self(idx[:, -self.config.seq_len:])[:, -1, :].float() / max(temperature, 1e-6)
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
        return idx


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
