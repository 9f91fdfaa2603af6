from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prsm_node.datadir import DataDir, DataDirLock
from prsm_node.errors import DataDirInUse, KeyFileError, UserError
from prsm_node.identity import peer_id_of, read_seed


def test_initialise_creates_private_key_and_config(short_dir: Path) -> None:
    data_dir = DataDir(short_dir / "node")
    assert data_dir.initialise() is True
    assert stat.S_IMODE(data_dir.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.root.stat().st_mode) == 0o700
    assert data_dir.config_file.read_text().startswith("# PRSM node configuration")
    assert peer_id_of(read_seed(data_dir.key_file)).startswith("12D3KooW")


def test_initialise_never_replaces_an_existing_key(short_dir: Path) -> None:
    data_dir = DataDir(short_dir)
    data_dir.initialise()
    seed = read_seed(data_dir.key_file)
    assert data_dir.initialise() is False
    assert read_seed(data_dir.key_file) == seed


def test_key_readable_by_others_is_refused(short_dir: Path) -> None:
    data_dir = DataDir(short_dir)
    data_dir.initialise()
    data_dir.key_file.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_seed(data_dir.key_file)


def test_truncated_key_is_refused(short_dir: Path) -> None:
    data_dir = DataDir(short_dir)
    data_dir.initialise()
    data_dir.key_file.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="malformed"):
        read_seed(data_dir.key_file)


def test_second_lock_on_same_data_dir_is_refused_with_the_holder_pid(short_dir: Path) -> None:
    data_dir = DataDir(short_dir)
    data_dir.initialise()
    first = DataDirLock(data_dir)
    first.acquire()
    try:
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            DataDirLock(data_dir).acquire()
    finally:
        first.release()
    assert not data_dir.lock_file.exists()


def test_lock_of_a_killed_process_is_taken_over_and_its_socket_removed(short_dir: Path) -> None:
    data_dir = DataDir(short_dir)
    data_dir.initialise()
    data_dir.socket_path.write_text("stale")
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'999999'); os._exit(0)",
            str(data_dir.lock_file),
        ],
        check=True,
    )
    assert holder.returncode == 0 and data_dir.lock_file.exists()
    lock = DataDirLock(data_dir)
    lock.acquire()
    assert not data_dir.socket_path.exists()
    assert data_dir.lock_file.read_text().strip() == str(os.getpid())
    lock.release()


def test_socket_path_too_long_is_a_clear_error(short_dir: Path) -> None:
    data_dir = DataDir(short_dir / ("d" * 120))
    with pytest.raises(UserError, match="too long for a Unix socket"):
        data_dir.check_socket_path()
