"""Shared fixtures: short temporary dirs (Unix socket paths are capped at 107 bytes)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh dir under /tmp; pytest's tmp_path can be too long for node.sock."""
    directory = Path(tempfile.mkdtemp(prefix="prsm-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
