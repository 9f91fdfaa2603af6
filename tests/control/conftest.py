from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from prsm_node.control import Dispatcher

from .helpers import Methods, make_dispatcher


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory under /tmp: pytest's tmp_path can exceed the 107-byte socket limit."""
    directory = Path(tempfile.mkdtemp(prefix="prsm-ctl-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def socket_path(socket_dir: Path) -> Path:
    return socket_dir / "node.sock"


@pytest.fixture
def methods() -> Methods:
    return Methods()


@pytest.fixture
def dispatcher(methods: Methods) -> Dispatcher:
    return make_dispatcher(methods)
