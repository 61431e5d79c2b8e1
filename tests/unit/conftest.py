"""Unit tests run in one process: none may leave a process group behind for the next."""

import pytest
import torch.distributed as dist


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    started_before = dist.is_available() and dist.is_initialized()
    yield
    if not started_before and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
