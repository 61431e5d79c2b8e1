"""Mapped safetensors reading, format 1.1 module tensors rebuilt from master pieces, verification shares."""

import json
import zlib

import pytest
import torch

from zerospeed.checkpoint import layout
from zerospeed.checkpoint.files import SafetensorsReader, write_safetensors, write_safetensors_stream
from zerospeed.checkpoint.loader import Options, _files_to_verify
from zerospeed.checkpoint.module_source import CheckpointFiles, ModuleSource
from zerospeed.errors import CheckpointError


def test_reader_views_the_file_and_outlives_close(tmp_path):
    tensors = {"a": torch.arange(10.0), "odd": torch.ones(3, dtype=torch.uint8), "b": torch.randn(2, 3).bfloat16(),
               "c": torch.arange(5.0), "empty": torch.zeros(0), "scalar": torch.tensor(2.5)}
    path = str(tmp_path / "x.safetensors")
    info = write_safetensors(path, tensors, {"zerospeed": "{}"})
    data = open(path, "rb").read()
    assert info.bytes == len(data) and info.crc32 == zlib.crc32(data)  # threaded writer: same bytes, same CRC
    reader = SafetensorsReader(path)
    assert reader.keys() == list(tensors) and reader.metadata() == {"zerospeed": "{}"}
    views = {name: reader.tensor(name) for name in tensors}
    for name, value in tensors.items():
        assert views[name].dtype == value.dtype and torch.equal(views[name], value), name  # "c" is misaligned
    reader.verify({"bytes": info.bytes, "crc32": f"{info.crc32:08x}"})
    views["a"].add_(1)  # a private mapping: the file does not change
    reader.close()
    del reader
    assert torch.equal(views["a"], torch.arange(10.0) + 1)  # views keep the mapping alive
    assert open(path, "rb").read() == data


def test_reader_rejects_corrupted_headers(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="corrupted safetensors header"):
        SafetensorsReader(str(path))
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)  # 8 of 16 bytes
    with pytest.raises(CheckpointError, match="tensor 't' lies outside the file"):
        SafetensorsReader(str(path)).tensor("t")


def test_stream_and_threaded_writers_write_the_same_file(tmp_path):
    tensors = {f"t{i}": torch.randn(1000 + i) for i in range(5)}
    a = write_safetensors(str(tmp_path / "a"), tensors)
    b = write_safetensors_stream(str(tmp_path / "b"), [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()],
                                 tensors.__getitem__)
    assert a == b and (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def _checkpoint(tmp_path, pieces_by_rank: dict[int, list[tuple[int, int]]], weight: torch.Tensor) -> dict:
    """A 1.1-style tag dir: `w` kept only as master pieces, `buf` in the module file."""
    shards = {}
    for rank, bounds in pieces_by_rank.items():
        tensors = {f"p{i}.master": weight.reshape(-1)[s:e].clone() for i, (s, e) in enumerate(bounds)}
        write_safetensors(str(tmp_path / layout.shard_file(rank)), tensors)
        shards[str(rank)] = {"file": layout.shard_file(rank),
                             "pieces": [{"name": "w", "start": s, "end": e} for s, e in bounds]}
    write_safetensors(str(tmp_path / layout.MODEL_FILE), {"buf": torch.arange(4)})
    return {"module_file": layout.MODEL_FILE, "shards": shards,
            "module_tensors": {"buf": {"shape": [4], "dtype": "int64"}, "w": {"shape": list(weight.shape), "dtype": "bfloat16"},
                               "w_tied": {"shape": list(weight.shape), "dtype": "bfloat16"}},
            "module_ties": {"w_tied": "w"}, "module_tensors_in_shards": {"w": "w"}}


def test_module_tensors_rebuilt_from_master_pieces(tmp_path):
    weight = torch.randn(5, 7)
    manifest = _checkpoint(tmp_path, {0: [(0, 18)], 1: [(18, 35)]}, weight)
    files = CheckpointFiles(str(tmp_path), manifest)
    source = ModuleSource(manifest, files)
    source.check("test")
    assert source.names() == ["buf", "w", "w_tied"]
    assert torch.equal(source.full("w"), weight.bfloat16())  # cast to the recorded dtype
    assert torch.equal(source.full("w_tied", torch.float32), weight)  # a tie, rebuilt from the same pieces
    assert torch.equal(source.flat_range("w", 10, 25), weight.reshape(-1)[10:25])  # across two shards
    assert torch.equal(source.flat_range("w", 20, 30), weight.reshape(-1)[20:30])  # one shard: a view
    assert torch.equal(source.full("buf"), torch.arange(4))
    files.close()


def test_uncovered_tensor_in_shards_is_an_error(tmp_path):
    manifest = _checkpoint(tmp_path, {0: [(0, 18)], 1: [(20, 35)]}, torch.randn(5, 7))
    with pytest.raises(CheckpointError, match=r"elements \[\(18, 20\)\] of module tensor w .* are in no shard"):
        ModuleSource(manifest).check("test")


def test_verification_shares_cover_every_file_once():
    files = {"engine_state.pt": {"bytes": 10}, "model.safetensors": {"bytes": 50},
             **{layout.shard_file(r): {"bytes": 100} for r in range(4)}}
    manifest = {"files": files, "shards": {str(r): {"file": layout.shard_file(r)} for r in range(4)}}
    for world in (1, 2, 3, 4, 8):
        shares = [_files_to_verify(manifest, Options(), rank, world) for rank in range(world)]
        assert sorted(name for share in shares for name in share) == sorted(files)
        if world in (2, 4):  # at the saving world size a rank checks the shard it reads next
            for rank in range(world):
                assert all(int(n[4:9]) % world == rank for n in shares[rank] if n.startswith("rank"))
    module_only = [_files_to_verify(manifest, Options(module_only=True), rank, 2) for rank in range(2)]
    assert sorted(module_only[0] + module_only[1]) == ["engine_state.pt", "model.safetensors"]
    manifest["module_tensors_in_shards"] = {"w": "w"}  # module only, but weights are in the shards
    module_only = [_files_to_verify(manifest, Options(module_only=True), rank, 2) for rank in range(2)]
    assert sorted(module_only[0] + module_only[1]) == sorted(files)


def test_manifest_minor_version(tmp_path):
    directory = tmp_path / "t"
    directory.mkdir()
    manifest = {"format": layout.FORMAT_NAME, "version": 1, "minor_version": layout.FORMAT_MINOR_VERSION, "files": {}}
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    assert layout.read_manifest(str(directory))["minor_version"] == 2
    del manifest["minor_version"]  # format 1.0
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    layout.read_manifest(str(directory))
    manifest["minor_version"] = layout.FORMAT_MINOR_VERSION + 1
    (directory / layout.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"format version 1\.3; this zerospeed reads versions up to 1\.2"):
        layout.read_manifest(str(directory))
