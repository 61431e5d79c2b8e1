"""A checkpoint's module tensors, wherever the save put them: the module file or the fp32 master pieces.

Since format 1.1 a ZeRO stage-3 save writes into `model.safetensors` only what no optimizer
holds (buffers, frozen parameters, parameters no optimizer steps). Every other parameter is
rebuilt from the fp32 master pieces that the ranks' shards hold anyway: the manifest's
`module_tensors_in_shards` maps its state-dict name to the parameter name of those pieces,
and `module_tensors` still records its shape and dtype (the master values are cast to it).
Without the field (format 1.0, and saves at stages 0-2) every tensor is in the module file.
"""

from __future__ import annotations

import math
import os

import torch

from zerospeed.checkpoint import layout
from zerospeed.checkpoint.files import SafetensorsReader
from zerospeed.checkpoint.universal import SavedPiece, missing_ranges, plan_copies, saved_pieces
from zerospeed.errors import CheckpointError


class CheckpointFiles:
    """The tensor files of one checkpoint tag, each mapped at most once (views of them, not copies)."""

    def __init__(self, tag_dir: str, manifest: dict) -> None:
        self.tag_dir = tag_dir
        self.manifest = manifest
        self._readers: dict[str, SafetensorsReader] = {}

    def open(self, name: str) -> SafetensorsReader:
        if name not in self._readers:
            self._readers[name] = SafetensorsReader(os.path.join(self.tag_dir, name))
        return self._readers[name]

    def shard(self, rank: int) -> SafetensorsReader:
        shard = self.manifest.get("shards", {}).get(str(rank))
        return self.open(shard["file"] if shard else layout.shard_file(rank))

    def model(self, stored_name: str | None = None) -> SafetensorsReader:
        """The module file holding `stored_name` (a pipeline stage's own file, since format 1.2)."""
        default = self.manifest.get("module_file", layout.MODEL_FILE)
        return self.open(self.manifest.get("module_files", {}).get(stored_name, default))

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"checkpoint records a module tensor of unknown dtype '{name}'")
    return dtype


class ModuleSource:
    """Reads module tensors (whole, or a range of their flattened elements) from a checkpoint."""

    def __init__(self, manifest: dict, files: CheckpointFiles | None = None) -> None:
        self.files = files
        self.specs: dict[str, dict] = manifest["module_tensors"]
        self.ties: dict[str, str] = manifest.get("module_ties", {})
        self.in_shards: dict[str, str] = manifest.get("module_tensors_in_shards", {})
        self.pieces: dict[str, list[SavedPiece]] = saved_pieces(manifest.get("shards", {}))

    def names(self) -> list[str]:
        """Every module tensor the checkpoint has, tied names included, in state-dict order."""
        return list(self.specs)

    def stored_name(self, name: str) -> str:
        return self.ties.get(name, name)

    def master_name(self, name: str) -> str | None:
        """The parameter whose master pieces hold `name`, or None when it is in the module file."""
        return self.in_shards.get(self.stored_name(name))

    def dtype(self, name: str) -> torch.dtype:
        return _dtype(self.specs[name]["dtype"])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.specs[name]["shape"])

    def check(self, where: str) -> None:
        """CheckpointError unless every tensor kept in the shards is fully covered by saved pieces."""
        for name, param in self.in_shards.items():
            if name not in self.specs:
                raise CheckpointError(f"{where}: module_tensors_in_shards names '{name}', which module_tensors lacks")
            numel = math.prod(self.shape(name))
            gaps = missing_ranges(plan_copies(self.pieces.get(param, []), 0, numel), 0, numel)
            if gaps:
                raise CheckpointError(f"{where}: elements {gaps} of module tensor {name} (saved as the fp32 master "
                                      f"pieces of parameter {param}) are in no shard of the checkpoint")

    def flat_range(self, name: str, start: int, end: int) -> torch.Tensor:
        """Elements [start, end) of flattened tensor `name`, in its stored dtype (fp32 for a tensor kept
        as master pieces): a view of a mapped file when one saved range holds them, else a new tensor."""
        param = self.master_name(name)
        if param is None:
            stored = self.stored_name(name)
            return self.files.model(stored).tensor(stored).reshape(-1)[start:end]
        copies = plan_copies(self.pieces.get(param, []), start, end)
        if missing_ranges(copies, start, end):
            raise CheckpointError(f"module tensor {name}: elements [{start}, {end}) are not all in the saved "
                                  f"master pieces of {param}")

        def part(copy):
            master = self.files.shard(copy.source.rank).tensor(f"p{copy.source.index}.master")
            return master[copy.source_offset : copy.source_offset + copy.length]

        if len(copies) == 1:
            return part(copies[0])
        out = torch.empty(end - start, dtype=torch.float32)
        for copy in copies:
            out[copy.target_offset : copy.target_offset + copy.length].copy_(part(copy))
        return out

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor `name`, whole, in the dtype the module had: a view of the module file when it is
        there (valid while referenced; writes change only this process's copy), else rebuilt."""
        if self.master_name(name) is None:
            stored = self.stored_name(name)
            return self.files.model(stored).tensor(stored)
        return self.full(name)

    def full(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name`, whole, as a new tensor in `dtype` (default: the dtype the module had)."""
        shape = self.shape(name)
        out = torch.empty(shape, dtype=dtype or self.dtype(name))
        out.view(-1).copy_(self.flat_range(name, 0, out.numel()))
        return out
