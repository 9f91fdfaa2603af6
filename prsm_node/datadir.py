"""The data dir: its layout, first-time initialisation and the single-daemon lock.

Layout of `<data_dir>`: node.key (0600), node.toml, node.lock, node.sock (0600),
peers.json, logs/. The lock is an flock on node.lock, so the kernel drops it when the
daemon dies, even by SIGKILL: a lock file left behind is stale by definition and is simply
taken over, and a socket left behind by a killed daemon is removed by whoever holds the
lock (nobody else can be serving it).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from prsm_node.config import NodeConfig, render_toml
from prsm_node.errors import DataDirInUse, UserError
from prsm_node.identity import KEY_FILE_NAME, create_key_file

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
SOCKET_PATH_BYTES_MAX = 107


def default_data_dir() -> Path:
    """$PRSM_HOME, else ~/.prsm."""
    home = os.environ.get("PRSM_HOME")
    return Path(home).expanduser() if home else Path.home() / ".prsm"


@dataclass(frozen=True, slots=True)
class DataDir:
    root: Path

    @property
    def key_file(self) -> Path:
        return self.root / KEY_FILE_NAME

    @property
    def config_file(self) -> Path:
        return self.root / "node.toml"

    @property
    def lock_file(self) -> Path:
        return self.root / "node.lock"

    @property
    def socket_path(self) -> Path:
        return self.root / "node.sock"

    @property
    def peers_file(self) -> Path:
        return self.root / "peers.json"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def is_initialised(self) -> bool:
        return self.key_file.exists()

    def initialise(self, config: NodeConfig | None = None) -> bool:
        """Create the dir, key and node.toml where missing; True if anything was created."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_dir.mkdir(mode=0o700, exist_ok=True)
        created = False
        if not self.key_file.exists():
            create_key_file(self.key_file)
            created = True
        if not self.config_file.exists():
            self.config_file.write_text(render_toml(config), encoding="utf-8")
            created = True
        return created

    def check_socket_path(self) -> None:
        if len(os.fsencode(self.socket_path)) > SOCKET_PATH_BYTES_MAX:
            raise UserError(
                f"data dir path too long for a Unix socket: {self.socket_path} is over "
                f"{SOCKET_PATH_BYTES_MAX} bytes; choose a shorter --data-dir"
            )


class DataDirLock:
    """An exclusive flock on node.lock holding the daemon's pid; released on close or death."""

    def __init__(self, data_dir: DataDir) -> None:
        self._data_dir = data_dir
        self._descriptor: int | None = None

    def acquire(self) -> None:
        path = self._data_dir.lock_file
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(descriptor)
            os.close(descriptor)
            raise DataDirInUse(self._data_dir.root, pid) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self._descriptor = descriptor
        if self._data_dir.socket_path.exists():
            self._data_dir.socket_path.unlink()  # stale: its daemon no longer holds the lock

    def release(self) -> None:
        if self._descriptor is None:
            return
        self._data_dir.lock_file.unlink(missing_ok=True)
        os.close(self._descriptor)  # closing drops the flock
        self._descriptor = None


def _read_pid(descriptor: int) -> int | None:
    text = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
