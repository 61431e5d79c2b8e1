"""Shared pieces of the parity oracle: a small awkward model, its data, a plain torch loop.

The same model, seed and global batch are trained by plain single-process torch and by
zerospeed on N ranks; the tests compare losses and final parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VOCAB, DIM, HIDDEN, SEQ = 16, 12, 37, 5


class TinyLM(torch.nn.Module):
    """Embedding with a tied head, an MLP block, a LayerNorm, a sometimes-unused layer and a frozen one.

    Sizes (192, 481, 456, 24, ...) are deliberately not divisible by 2 or 4.
    """

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.up = torch.nn.Linear(DIM, HIDDEN)
        self.down = torch.nn.Linear(HIDDEN, DIM)
        self.norm = torch.nn.LayerNorm(DIM)
        self.sometimes = torch.nn.Linear(DIM, DIM)
        self.frozen = torch.nn.Linear(DIM, DIM)
        self.frozen.requires_grad_(False)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, use_sometimes: bool = False) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.down(F.gelu(self.up(h)))
        h = h + 0.1 * self.frozen(h)
        if use_sometimes:
            h = h + self.sometimes(h)
        h = self.norm(h)
        logits = h @ self.embed.weight.t()
        return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1))


def make_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def global_micro_batch(step: int, micro: int, global_micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global micro-batch for (step, micro): identical on every rank and in the reference."""
    generator = torch.Generator().manual_seed(1000 * step + micro)
    tokens = torch.randint(0, VOCAB, (global_micro, SEQ + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def param_groups(model: TinyLM, two_groups: bool, lr: float) -> list[dict] | list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not two_groups:
        return params
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "norm" in n)]
    ids = {id(p) for p in no_decay}
    decay = [p for p in params if id(p) not in ids]
    return [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0, "lr": lr * 0.5}]


def use_sometimes(step: int) -> bool:
    return step % 3 == 1


def reference_run(steps: int, world: int, micro: int, gas: int, lr: float, clip: float, two_groups: bool,
                  weight_decay: float = 0.01) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Plain torch: one process, the whole global batch of each step at once."""
    model = make_model()
    optimizer = torch.optim.AdamW(param_groups(model, two_groups, lr), lr=lr, weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        batches = [global_micro_batch(step, m, micro * world) for m in range(gas)]
        tokens = torch.cat([b[0] for b in batches])
        targets = torch.cat([b[1] for b in batches])
        loss = model(tokens, targets, use_sometimes(step))
        loss.backward()
        for param in model.parameters():  # unused this step: a zero gradient, as in flat ZeRO buffers
            if param.requires_grad and param.grad is None:
                param.grad = torch.zeros_like(param)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def train_steps(engine, steps: int, micro: int, gas: int) -> list[float]:
    """Train `steps` optimizer steps on this rank's slice; the global mean loss of each step."""
    from zerospeed import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    losses = []
    for step in range(steps):
        total = torch.zeros(())
        for m in range(gas):
            tokens, targets = global_micro_batch(step, m, micro * world)
            mine = slice(rank * micro, (rank + 1) * micro)
            loss = engine(tokens[mine], targets[mine], use_sometimes(step))
            engine.backward(loss)
            engine.step()
            total += loss.detach().float()
        comm.all_reduce(total)
        losses.append(float(total) / (gas * world))
    return losses


def zerospeed_run(steps: int, micro: int, gas: int, lr: float, clip: float, two_groups: bool, extra: dict,
                  weight_decay: float = 0.01) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    """zerospeed on this rank; returns global mean losses per step, final params and facts."""
    import zerospeed

    model = make_model()
    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": weight_decay}},
        "gradient_clipping": clip,
        "steps_per_print": 1000,
    }
    for key, value in extra.items():
        config[key] = value
    engine, optimizer, _, _ = zerospeed.initialize(
        model=model, model_parameters=param_groups(model, two_groups, lr), config=config
    )
    losses = train_steps(engine, steps, micro, gas)
    facts = {
        "global_steps": engine.global_steps, "micro_steps": engine.micro_steps, "global_samples": engine.global_samples,
        "skipped_steps": engine.skipped_steps, "memory": engine.memory_report(),
        "grad_norm": engine.get_global_grad_norm(),
    }
    params = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    return losses, params, facts


class PairsMpu:
    """A model-parallel unit that splits the world into independent data-parallel pairs."""

    def __init__(self) -> None:
        from zerospeed import comm

        world, rank = comm.get_world_size(), comm.get_rank()
        groups = [comm.new_group([r, r + 1]) for r in range(0, world, 2)]
        self.group = groups[rank // 2]

    def get_data_parallel_group(self):
        return self.group

    def get_data_parallel_world_size(self) -> int:
        return 2

    def get_data_parallel_rank(self) -> int:
        from zerospeed import comm

        return comm.get_rank() % 2


def zerospeed_pairs_run(steps: int, stage: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Two independent 2-rank data-parallel jobs inside a 4-rank world, through `mpu`."""
    import zerospeed
    from zerospeed import comm

    mpu = PairsMpu()
    rank = comm.get_rank() % 2
    model = make_model()
    config = {
        "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.5, "steps_per_print": 1000,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 300},
    }
    engine, *_ = zerospeed.initialize(model=model, model_parameters=model.parameters(), config=config, mpu=mpu)
    for step in range(steps):
        tokens, targets = global_micro_batch(step, 0, 4)
        engine.backward(engine(tokens[rank * 2 : rank * 2 + 2], targets[rank * 2 : rank * 2 + 2], use_sometimes(step)))
        engine.step()
    return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
