"""Fixtures for config tests: fixture paths and a recorder for warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerospeed.utils import logging as zs_logging

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def warnings_seen(monkeypatch) -> list[str]:
    """Every warn_once message, without the once-only memory (tests must see repeats)."""
    seen: list[str] = []
    monkeypatch.setattr(zs_logging, "warn_once", seen.append)
    return seen
