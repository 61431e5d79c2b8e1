"""Async I/O engine: round trips of awkward sizes, concurrency, O_DIRECT and buffered paths, errors.

Swap-like files go under /var/tmp (a real disk here, where O_DIRECT works). Failure cases
use small tmpfs mounts (root only; skipped where mounting is not allowed): a 1 MiB one for
"disk full", a read-only one for "not writable" (root bypasses chmod, not a ro mount).
"""

import errno
import os
import shutil
import subprocess
import tempfile

import pytest
import torch

from zerospeed.io import ALIGNMENT, AsyncIO, IOPolicy, aligned_empty, direct, probe

SIZES = [1, 3, 255, 1023, 1024, 1025, 4095, 12_345, 262_144 + 7, (1 << 20) + 3]


@pytest.fixture
def disk_dir():
    path = tempfile.mkdtemp(prefix="zs-io-test-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def io():
    engine = AsyncIO(IOPolicy(block_size=16_384, queue_depth=4, threads=3))
    yield engine
    engine.close()


def _mount_tmpfs(path, options):
    if os.geteuid() != 0:
        pytest.skip("mounting a test file system needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {result.stderr.decode().strip()}")


@pytest.fixture
def small_tmpfs():
    path = tempfile.mkdtemp(prefix="zs-io-full-", dir="/var/tmp")
    _mount_tmpfs(path, "size=1m")
    yield path
    subprocess.run(["umount", "-l", path], check=False)  # lazy: a test may still hold a file open
    os.rmdir(path)


@pytest.fixture
def read_only_dir():
    path = tempfile.mkdtemp(prefix="zs-io-ro-", dir="/var/tmp")
    _mount_tmpfs(path, "size=1m,ro")
    yield path
    subprocess.run(["umount", "-l", path], check=False)  # lazy: a test may still hold a file open
    os.rmdir(path)


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned-buffer", "unaligned-buffer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_round_trip_many_sizes(disk_dir, io, aligned, dtype):
    for n in SIZES:
        values = torch.randn(n).to(dtype) if dtype.is_floating_point else torch.randint(0, 255, (n,), dtype=dtype)
        source = aligned_empty(n, dtype) if aligned else torch.empty(n + 1, dtype=dtype)[1:]
        source.copy_(values)
        file = io.open(os.path.join(disk_dir, f"{n}.swp"))
        try:
            assert io.write(source, file).wait() == n * source.element_size()
            back = aligned_empty(n, dtype) if aligned else torch.zeros(n + 3, dtype=dtype)[3:]
            io.read(back, file).wait()
            assert torch.equal(back, values), n
        finally:
            file.close()


def test_offsets_place_tensors_side_by_side(disk_dir, io):
    file = io.open(os.path.join(disk_dir, "packed.swp"))
    parts = [torch.randn(n) for n in (1000, 1, 5000, 333)]
    offsets = [0, 4096 * 2, 4096 * 3 + 4, 4096 * 10]  # one offset not block-aligned
    for tensor, offset in zip(parts, offsets):
        io.write(tensor, file, offset).wait()
    for tensor, offset in zip(parts, offsets):
        back = torch.empty_like(tensor)
        io.read(back, file, offset).wait()
        assert torch.equal(back, tensor)
    file.close()


def test_many_requests_in_flight_at_once(disk_dir, io):
    tensors = [torch.full((50_000 + i * 37,), float(i)) for i in range(24)]
    files = [io.open(os.path.join(disk_dir, f"c{i}.swp")) for i in range(len(tensors))]
    writes = [io.write(t, f) for t, f in zip(tensors, files)]
    assert sum(w.wait() for w in writes) == sum(t.numel() * 4 for t in tensors)
    backs = [torch.empty_like(t) for t in tensors]
    reads = [io.read(b, f) for b, f in zip(backs, files)]
    for read, back, tensor in zip(reads, backs, tensors):
        read.wait()
        assert torch.equal(back, tensor)
    stats = io.stats.snapshot()
    assert stats["bytes_read"] == stats["bytes_written"] == sum(t.numel() * 4 for t in tensors)
    assert stats["read_seconds"] > 0 and stats["write_seconds"] > 0
    for f in files:
        f.close()


def test_direct_io_is_used_on_a_real_disk(disk_dir, io):
    if not probe(disk_dir):
        pytest.skip("this file system refuses O_DIRECT")
    file = io.open(os.path.join(disk_dir, "direct.swp"))
    assert file.direct
    tensor = aligned_empty(3 * ALIGNMENT + 5, torch.uint8).random_(0, 255)
    io.write(tensor, file).wait()
    assert os.path.getsize(file.path) == 4 * ALIGNMENT  # the partial last block is written whole
    back = aligned_empty(tensor.numel(), torch.uint8)
    io.read(back, file).wait()
    assert torch.equal(back, tensor)
    file.close()


def test_buffered_fallback_when_o_direct_is_refused(disk_dir, monkeypatch):
    real_open = os.open

    def refusing_open(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct, "_probed", {})
    monkeypatch.setattr(os, "open", refusing_open)
    assert not probe(disk_dir)
    engine = AsyncIO(IOPolicy(block_size=4096, queue_depth=2, threads=2))
    file = engine.open(os.path.join(disk_dir, "buffered.swp"))
    assert not file.direct
    tensor = torch.randn(10_007)
    engine.write(tensor, file).wait()
    back = torch.empty_like(tensor)
    engine.read(back, file).wait()
    assert torch.equal(back, tensor)
    assert os.path.getsize(file.path) == tensor.numel() * 4  # buffered: no block padding
    file.close()
    engine.close()


def test_policy_can_turn_direct_io_off(disk_dir):
    engine = AsyncIO(IOPolicy(direct=False))
    file = engine.open(os.path.join(disk_dir, "off.swp"))
    assert not file.direct
    file.close()
    engine.close()


def test_reading_past_the_end_is_an_error(disk_dir, io):
    file = io.open(os.path.join(disk_dir, "short.swp"))
    io.write(torch.ones(10), file).wait()
    with pytest.raises(OSError, match="end of file"):
        io.read(torch.empty(100_000), file).wait()
    file.close()


def test_policy_from_aio_config():
    from zerospeed.config import load_config

    config = load_config({"train_batch_size": 1, "aio": {"block_size": 262144, "queue_depth": 16,
                                                           "thread_count": 4, "single_submit": True}})
    policy = IOPolicy.from_config(config.aio)
    assert (policy.block_size, policy.queue_depth, policy.threads) == (262144, 16, 4)
    assert policy.blocks_per_call == 1 and policy.submit_bytes == 262144


def test_disk_full_fails_the_request_with_enospc(small_tmpfs):
    engine = AsyncIO(IOPolicy(block_size=65536, queue_depth=2, threads=2))
    file = engine.open(os.path.join(small_tmpfs, "big.swp"))
    with pytest.raises(OSError) as raised:
        engine.write(torch.zeros(1 << 20), file).wait()  # 4 MiB into 1 MiB
    assert raised.value.errno == errno.ENOSPC and "big.swp" in str(raised.value)
    file.close()
    engine.close()


def test_read_only_directory_cannot_take_swap_files(read_only_dir):
    engine = AsyncIO()
    with pytest.raises(OSError) as raised:
        engine.open(os.path.join(read_only_dir, "x.swp"))
    assert raised.value.errno == errno.EROFS
    engine.close()
