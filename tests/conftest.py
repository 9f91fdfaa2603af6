"""Shared fixtures: short temporary dirs (Unix socket paths are capped at 107 bytes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded 2-core CI machine a slow example is not a bug, and
# speed is measured in benchmarks/, never asserted. CI runs derandomized, so a red build
# always replays; a local run explores new examples each time.
settings.register_profile("local", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "local")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh dir under /tmp; pytest's tmp_path can be too long for node.sock.
    PRSM_TEST_KEEP=1 keeps it (node logs and data dirs) for a post-mortem."""
    directory = Path(tempfile.mkdtemp(prefix="prsm-", dir="/tmp"))
    yield directory
    if os.environ.get("PRSM_TEST_KEEP") != "1":
        shutil.rmtree(directory, ignore_errors=True)
