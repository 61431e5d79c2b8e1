"""Streamed safetensors + CRC, atomic text replace, tag resolution and manifest checks."""

import json
import os
import zlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from zerospeed.checkpoint import layout
from zerospeed.checkpoint.files import atomic_write_text, file_info, verify_file, write_safetensors
from zerospeed.errors import CheckpointError


def test_written_safetensors_load_with_the_safetensors_library(tmp_path):
    big = torch.arange(64, dtype=torch.float32).view(8, 8)
    tensors = {
        "view": big[2:4],  # a view: only its elements are written
        "bf16": torch.randn(5).to(torch.bfloat16), "fp16": torch.randn(3, 2).half(),
        "scalar": torch.tensor(3.0), "int": torch.arange(7), "empty": torch.zeros(0), "flag": torch.tensor([True, False]),
    }
    info = write_safetensors(str(tmp_path / "a.safetensors"), tensors, {"zerospeed": json.dumps({"k": 1})})
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and torch.equal(loaded[name], value), name
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["zerospeed"]) == {"k": 1}
        assert torch.equal(f.get_slice("int")[2:5], torch.arange(2, 5))
    data = (tmp_path / "a.safetensors").read_bytes()
    assert info.bytes == len(data) and info.crc32 == zlib.crc32(data) == file_info(str(tmp_path / "a.safetensors")).crc32
    assert info.bytes < 1000  # the 8x8 storage behind the view was not written


def test_verify_names_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    record = {"bytes": 100, "crc32": f"{zlib.crc32(b'x' * 100):08x}"}
    verify_file(str(path), record)
    path.write_bytes(b"x" * 99 + b"y")
    with pytest.raises(CheckpointError, match=r"f.bin is corrupted: CRC32"):
        verify_file(str(path), record)
    path.write_bytes(b"x" * 50)
    with pytest.raises(CheckpointError, match=r"f.bin is 50 bytes, the manifest says 100"):
        verify_file(str(path), record)
    with pytest.raises(CheckpointError, match=r"g.bin is missing"):
        verify_file(str(tmp_path / "g.bin"), record)


def test_atomic_write_text_replaces(tmp_path):
    atomic_write_text(str(tmp_path / "latest"), "a")
    atomic_write_text(str(tmp_path / "latest"), "global_step2")
    assert (tmp_path / "latest").read_text() == "global_step2"
    assert os.listdir(tmp_path) == ["latest"]


def _fake_tag(root, tag, steps, complete=True):
    directory = root / tag
    directory.mkdir()
    (directory / "data").write_bytes(b"abc")
    if complete:
        manifest = {"format": layout.FORMAT_NAME, "version": 1, "counters": {"global_steps": steps},
                    "created_unix": steps, "files": {"data": {"bytes": 3, "crc32": "0"}}}
        (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    return directory


def test_resolve_tag(tmp_path):
    _fake_tag(tmp_path, "global_step5", 5)
    _fake_tag(tmp_path, "global_step9", 9)
    _fake_tag(tmp_path, "global_step12", 12, complete=False)
    (tmp_path / ".tmp-global_step13-abc").mkdir()
    assert layout.list_tags(str(tmp_path)) == ["global_step12", "global_step5", "global_step9"]
    assert layout.resolve_tag_dir(str(tmp_path), None) == ("global_step9", str(tmp_path / "global_step9"))
    (tmp_path / "latest").write_text("global_step5")
    assert layout.resolve_tag_dir(str(tmp_path), None)[0] == "global_step5"
    with pytest.raises(CheckpointError, match="available tags: global_step5, global_step9"):
        layout.resolve_tag_dir(str(tmp_path), "global_step7")
    with pytest.raises(CheckpointError, match="is incomplete"):
        layout.resolve_tag_dir(str(tmp_path), "global_step12")
    (tmp_path / "global_step9" / "data").write_bytes(b"ab")  # truncated: no longer complete
    assert not layout.is_complete(str(tmp_path / "global_step9"))
    assert layout.resolve_tag_dir(str(tmp_path / "global_step5"), None) is None


def test_manifest_checks(tmp_path):
    directory = _fake_tag(tmp_path, "t", 1)
    manifest = json.loads((directory / layout.MANIFEST).read_text())
    manifest["version"] = 99
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 99"):
        layout.read_manifest(str(directory))
    (directory / layout.MANIFEST).write_text("[]")
    with pytest.raises(CheckpointError, match="is not a zerospeed.checkpoint manifest"):
        layout.read_manifest(str(directory))


def test_module_tensors_store_tied_weights_once():
    from zerospeed.checkpoint.state import module_tensors

    module = torch.nn.Module()
    module.embed = torch.nn.Embedding(5, 3)
    module.head = torch.nn.Linear(3, 5, bias=False)
    module.head.weight = module.embed.weight
    module.register_buffer("count", torch.zeros(2))
    tensors, extra, ties = module_tensors(module, clone=True)
    assert sorted(tensors) == ["count", "embed.weight"] and ties == {"head.weight": "embed.weight"} and extra == {}
    assert tensors["embed.weight"].data_ptr() != module.embed.weight.data_ptr()
