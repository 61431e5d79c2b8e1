"""Offline consolidation: full fp32 (or bf16/fp16) weights from a checkpoint, one tensor at a time.

One process, no torch.distributed. Trainable parameters are rebuilt from the fp32 master
pieces every rank saved (any world size, any stage); frozen parameters and buffers come
from the module file (`module_source`). Files are memory-mapped, so a tensor costs one
copy out of the page cache. `iter_consolidated` yields tensors one by one and the
safetensors export writes each as soon as it is built, so peak memory stays near the
largest tensor (a pickle `.bin` export must hold the whole state dict at once).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Iterator

import torch

from zerospeed.checkpoint import layout
from zerospeed.checkpoint.files import verify_file, write_safetensors_stream
from zerospeed.checkpoint.module_source import CheckpointFiles, ModuleSource
from zerospeed.errors import CheckpointError

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower().removeprefix("torch.") not in _DTYPES:
        raise CheckpointError(f"output dtype {dtype!r} is not supported; allowed: fp32, bf16, fp16")
    return _DTYPES[str(dtype).lower().removeprefix("torch.")]


def open_checkpoint(checkpoint_dir: str, tag=None) -> tuple[str, dict]:
    """(tag directory, manifest) of `checkpoint_dir`'s `tag` (default: latest / newest complete)."""
    resolved = layout.resolve_tag_dir(os.fspath(checkpoint_dir), tag)
    if resolved is None:
        raise CheckpointError(f"no complete zerospeed checkpoint in {checkpoint_dir}; tags: "
                              f"{', '.join(layout.list_tags(checkpoint_dir)) or 'none'}")
    return resolved[1], layout.read_manifest(resolved[1])


class Consolidator:
    """Builds each output tensor on demand from a checkpoint's shards and module file."""

    def __init__(self, checkpoint_dir: str, tag=None, exclude_frozen_parameters: bool = False,
                 dtype=torch.float32, verify: bool = True) -> None:
        self.tag_dir, self.manifest = open_checkpoint(checkpoint_dir, tag)
        self.dtype = resolve_dtype(dtype)
        if verify:
            for name, info in sorted(self.manifest["files"].items()):
                verify_file(os.path.join(self.tag_dir, name), info)
        self.files = CheckpointFiles(self.tag_dir, self.manifest)
        self.source = ModuleSource(self._with_masters(self.manifest), self.files)
        self.source.check(self.tag_dir)
        frozen = set(self.manifest.get("frozen_parameters", [])) if exclude_frozen_parameters else set()
        self.names = [n for n in self.source.names() if n not in frozen]

    @staticmethod
    def _with_masters(manifest: dict) -> dict:
        """The manifest with every trainable tensor read from its fp32 master pieces, also where the
        save kept a copy in the model dtype in the module file (stages 0-2, format 1.0)."""
        saved = set(manifest.get("parameters", {}))
        aliases: dict[str, list[str]] = {}
        for primary, others in manifest.get("aliases", {}).items():
            for name in [primary, *others]:
                aliases[name] = [primary, *others]
        in_shards = dict(manifest.get("module_tensors_in_shards", {}))
        ties = manifest.get("module_ties", {})
        for name in manifest["module_tensors"]:
            stored = ties.get(name, name)
            if stored in in_shards:
                continue
            master = next((n for n in aliases.get(stored, [stored]) if n in saved), None)
            if master is not None:
                in_shards[stored] = master
        return {**manifest, "module_tensors_in_shards": in_shards}

    def __enter__(self) -> "Consolidator":
        return self

    def __exit__(self, *exc) -> None:
        self.files.close()

    def _out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if dtype.is_floating_point else dtype

    def spec(self, name: str) -> tuple[str, torch.dtype, tuple[int, ...]]:
        return name, self._out_dtype(self.source.dtype(name)), self.source.shape(name)

    def tensor(self, name: str) -> torch.Tensor:
        """The full tensor `name` (a new tensor): from fp32 masters if it is trainable, else from the module file."""
        return self.source.full(name, self._out_dtype(self.source.dtype(name)))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names:
            yield name, self.tensor(name)


class DeepSpeedConsolidator:
    """`Consolidator`'s interface over a checkpoint DeepSpeed wrote (`checkpoint.deepspeed_format`).

    DeepSpeed's files are pickles that must be read whole, so the fp32 state dict is built in
    memory first (as DeepSpeed's own zero_to_fp32 does); only the output is streamed.
    """

    def __init__(self, checkpoint_dir: str, tag=None, exclude_frozen_parameters: bool = False,
                 dtype=torch.float32) -> None:
        from zerospeed.checkpoint import deepspeed_format

        self.dtype = resolve_dtype(dtype)
        self.state = deepspeed_format.fp32_state_dict(checkpoint_dir, tag, exclude_frozen_parameters)
        self.names = list(self.state)

    def __enter__(self) -> "DeepSpeedConsolidator":
        return self

    def __exit__(self, *exc) -> None:
        self.state = {}

    def _out_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if dtype.is_floating_point else dtype

    def spec(self, name: str) -> tuple[str, torch.dtype, tuple[int, ...]]:
        value = self.state[name]
        return name, self._out_dtype(value.dtype), tuple(value.shape)

    def tensor(self, name: str) -> torch.Tensor:
        value = self.state[name]
        return value.to(self._out_dtype(value.dtype)).contiguous()


def open_consolidator(checkpoint_dir, tag=None, exclude_frozen_parameters=False, dtype=torch.float32):
    """A `Consolidator`, or a `DeepSpeedConsolidator` when the tag is a DeepSpeed checkpoint."""
    from zerospeed.checkpoint import deepspeed_format

    if deepspeed_format.find_checkpoint(os.fspath(checkpoint_dir), tag) is not None:
        return DeepSpeedConsolidator(checkpoint_dir, tag, exclude_frozen_parameters, dtype)
    return Consolidator(checkpoint_dir, tag, exclude_frozen_parameters, dtype)


def iter_consolidated(checkpoint_dir, tag=None, exclude_frozen_parameters=False, dtype=torch.float32):
    """Yield `(name, full tensor)` in state-dict order, one tensor alive at a time (zerospeed format)."""
    with open_consolidator(checkpoint_dir, tag, exclude_frozen_parameters, dtype) as consolidator:
        yield from consolidator


def _progress(total_bytes: int, label: str):
    if not sys.stderr.isatty():
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label, file=sys.stderr)


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    text = str(size).strip().upper()
    for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * _SIZE_UNITS[unit])
    return int(text)


def _shard_specs(specs: list, max_bytes: int) -> list[list]:
    shards, current, size = [], [], 0
    for spec in specs:
        nbytes = math.prod(spec[2]) * torch.empty((), dtype=spec[1]).element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += nbytes
    return shards + ([current] if current else [])


def export(checkpoint_dir, output: str, *, tag=None, dtype=torch.float32, safe_serialization: bool = False,
           max_shard_size="5GB", exclude_frozen_parameters: bool = False) -> list[str]:
    """Write consolidated weights to `output` (a file if it ends in .safetensors/.bin/.pt, else a
    directory with Hugging Face names and an index when sharded). Returns the files written.
    A checkpoint DeepSpeed wrote is read too (`DeepSpeedConsolidator`)."""
    single = output.endswith((".safetensors", ".bin", ".pt", ".pth"))
    safe = output.endswith(".safetensors") or (safe_serialization and not single)
    with open_consolidator(checkpoint_dir, tag, exclude_frozen_parameters, dtype) as consolidator:
        specs = [consolidator.spec(name) for name in consolidator.names]
        total = sum(math.prod(s[2]) * torch.empty((), dtype=s[1]).element_size() for s in specs)
        shards = [specs] if single else _shard_specs(specs, _parse_size(max_shard_size))
        base = "model" if safe else "pytorch_model"
        suffix = ".safetensors" if safe else ".bin"
        if single:
            names = [output]
        else:
            os.makedirs(output, exist_ok=True)
            count = len(shards)
            names = [os.path.join(output, base + suffix)] if count == 1 else [
                os.path.join(output, f"{base}-{i + 1:05d}-of-{count:05d}{suffix}") for i in range(count)]
        with _progress(total, "consolidate") as bar:
            advance = bar.update if bar is not None else None
            for path, shard in zip(names, shards):
                if safe:
                    write_safetensors_stream(path, shard, consolidator.tensor, {"format": "pt"}, advance)
                else:
                    state = {}
                    for name, _, _ in shard:
                        state[name] = consolidator.tensor(name)
                        if advance:
                            advance(state[name].numel() * state[name].element_size())
                    torch.save(state, path)
        if len(names) > 1:
            index = {"metadata": {"total_size": total},
                     "weight_map": {s[0]: os.path.basename(p) for p, shard in zip(names, shards) for s in shard}}
            index_path = os.path.join(output, f"{base}{suffix}.index.json")
            with open(index_path, "w") as f:
                json.dump(index, f, indent=2)
            names.append(index_path)
    return names
