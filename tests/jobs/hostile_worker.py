"""The worker with its model code replaced by code that tries to reach the node.

Started as ``python -I hostile_worker.py TARGETS_JSON [worker arguments]`` (see
test_worker_sandbox.py). It is the real worker (``worker.main``: its sandbox, limits and
protocol); only ``worker.run``, where a job's tensor code runs, is this file's. It tries
each target and returns what happened in its ``done`` info, with a valid empty output.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prsm_node.jobs import worker
from prsm_node.jobs.spec import OUTPUT, OUTPUTS_DIR, JobSpec
from prsm_node.jobs.tensorfile import write_tensorfile

CONNECT_TIMEOUT_S = 5.0


def _attempt(action: Callable[[], object]) -> str:
    """"ok", or the error's name (ENOENT, ENETUNREACH, ...)."""
    try:
        action()
    except OSError as error:
        return os.strerror(error.errno) if error.errno else type(error).__name__
    return "ok"


def _connect(family: socket.AddressFamily, address: Any) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as connection:
        connection.settimeout(CONNECT_TIMEOUT_S)
        connection.connect(address)


def hostile_run(targets: dict[str, Any]) -> Callable[[JobSpec, worker.Emit], dict[str, Any]]:
    def run(spec: JobSpec, emit: worker.Emit) -> dict[str, Any]:
        key = targets["key_file"]
        attempts = {
            "key_file": _attempt(lambda: Path(key).read_bytes()),
            "key_via_parent_root": _attempt(
                lambda: Path(f"/proc/{os.getppid()}/root{key}").read_bytes()),
            "control_socket": _attempt(lambda: _connect(socket.AF_UNIX, targets["socket"])),
            "tcp_listener": _attempt(
                lambda: _connect(socket.AF_INET, ("127.0.0.1", targets["tcp_port"]))),
            "work_dir": _attempt(lambda: Path("job.json").read_bytes()),
        }
        Path(OUTPUTS_DIR, OUTPUT).write_bytes(write_tensorfile([]))
        return {"attempts": attempts}

    return run


if __name__ == "__main__":
    worker.run = hostile_run(json.loads(sys.argv[1]))
    status = worker.main(sys.argv[2:])
    sys.stderr.flush()
    os._exit(status)
