"""Random number generator states of one rank (python, numpy, torch, accelerator) as tensors + JSON."""

from __future__ import annotations

import random

import torch

try:
    import numpy
except ImportError:  # numpy is optional for zerospeed
    numpy = None


def capture() -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON-able facts) that `restore` turns back into every generator's state."""
    tensors = {"rng.torch": torch.get_rng_state()}
    version, state, gauss = random.getstate()
    facts: dict = {"python": [version, list(state), gauss]}
    if numpy is not None:
        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(keys.astype(numpy.int64))
        facts["numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
        facts["cuda_devices"] = torch.cuda.device_count()
    return tensors, facts


def restore(tensors: dict[str, torch.Tensor], facts: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    version, state, gauss = facts["python"]
    random.setstate((version, tuple(state), gauss))
    if numpy is not None and "numpy" in facts and "rng.numpy" in tensors:
        kind, pos, has_gauss, cached = facts["numpy"]
        numpy.random.set_state((kind, tensors["rng.numpy"].numpy().astype(numpy.uint32), pos, has_gauss, cached))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
