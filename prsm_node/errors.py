"""Typed errors of the node shell, named by whose fault they are (STYLE.md rule 5).

An operator's mistake (a bad config, a data dir in use) is a `UserError`: the CLI prints its
message and exits with its `exit_code`, never a traceback. A peer's fault is a
`PeerProtocolError`: the shell counts it and scores the peer down. Anything else is our bug
and is allowed to crash.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """A problem the operator can fix; carries the process exit code to use."""

    exit_code = 1


class ConfigError(UserError):
    """A config file, key or flag is wrong; names the file, the key and the reason."""

    exit_code = 2

    def __init__(self, file: Path | str, key: str | None, reason: str) -> None:
        self.file = str(file)
        self.key = key
        self.reason = reason
        where = f"{self.file}: {key}" if key else self.file
        super().__init__(f"config error in {where}: {reason}")


class DataDirInUse(UserError):
    """Another daemon holds the data dir's lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another node ({who}) is already running on data dir {data_dir}; "
            f"stop it with `prsm-node stop --data-dir {data_dir}` or pick another --data-dir"
        )


class KeyFileError(UserError):
    """The node key file is unreadable, malformed or readable by others."""


class ListenError(UserError):
    """An address of `network.listen` cannot be listened on (in use, not ours): a node
    that started anyway would be unreachable and say nothing."""


class PeerProtocolError(Exception):
    """A peer sent something that breaks the protocol: counted, scored, never fatal."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"peer {peer}: {reason}")
