"""The sandbox: job code in a worker cannot read the node's key, reach its control socket,
go through another process's /proc entry or open a TCP connection; with ``sandbox = off``
the same code can, which is what makes these tests able to fail.

The job code is hostile_worker.py: the real worker (main, sandbox, limits, protocol) with
the model code replaced by code that tries each target, as a job exploiting a bug in the
tensor code would. No job kind runs arbitrary code, so it comes in the one way the runner
already allows: the interpreter it starts workers with (``python``), here a script that
starts hostile_worker.py instead of ``-m prsm_node.jobs.worker``, with the same arguments.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import trio

from prsm_node.jobs.errors import JobRefused
from prsm_node.jobs.process import JobRequest
from prsm_node.jobs.runner import JobRunner
from prsm_node.jobs.sandbox import probe
from prsm_node.jobs.tensors import to_safetensors
from tests.jobs.conftest import TEST_JOBS
from tests.jobs.helpers import published

pytestmark = pytest.mark.multiprocess

HOSTILE = Path(__file__).with_name("hostile_worker.py")
JOB_WAIT_S = 120


@dataclass(frozen=True, slots=True)
class FakeNode:
    """What a node has that a job must not reach: its data dir (key file, listening control
    socket, jobs work root inside it, as the daemon lays it out) and a TCP listener."""

    data_dir: Path
    key_file: Path
    socket_path: Path
    tcp_port: int

    def targets(self) -> str:
        return json.dumps({"key_file": str(self.key_file), "socket": str(self.socket_path),
                           "tcp_port": self.tcp_port})


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    # Under /tmp, short: a Unix socket path has at most 107 bytes, pytest's tmp_path can
    # be longer.
    data_dir = Path(tempfile.mkdtemp(prefix="prsm-sbx-", dir="/tmp"))
    listeners = [socket.socket(socket.AF_UNIX), socket.socket(socket.AF_INET)]
    try:
        key_file = data_dir / "node.key"
        key_file.write_bytes(b"secret seed")
        key_file.chmod(0o600)
        (data_dir / "jobs").mkdir(mode=0o700)
        unix, tcp = listeners
        unix.bind(str(data_dir / "node.sock"))
        unix.listen(8)  # a connect completes into the backlog: nobody needs to accept
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(8)
        yield FakeNode(data_dir=data_dir, key_file=key_file,
                       socket_path=data_dir / "node.sock", tcp_port=tcp.getsockname()[1])
        assert list((data_dir / "jobs").iterdir()) == [], "a work dir was left behind"
    finally:
        for listener in listeners:
            listener.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _hostile_python(folder: Path, node: FakeNode) -> str:
    """An executable the runner takes for python: for ``-I -m prsm_node.jobs.worker`` it
    runs hostile_worker.py with the targets and the worker's remaining arguments; anything
    else (the sandbox probe) goes to python as it is."""
    script = folder / "hostile-python"
    script.write_text(f"#!/bin/sh\nif [ \"$3\" = prsm_node.jobs.worker ]; then\n  shift 3\n"
                      f"  exec '{sys.executable}' -I '{HOSTILE}' '{node.targets()}' \"$@\"\n"
                      f"fi\nexec '{sys.executable}' \"$@\"\n")
    script.chmod(0o700)
    return str(script)


def _job() -> JobRequest:
    return JobRequest(kind="inference", models={"model": published("mlp").files()},
                      inputs={"input.safetensors": to_safetensors({"input": torch.zeros(1, 16)})},
                      params={})


async def _attempts(nursery: trio.Nursery, node: FakeNode, python: str, mode: str
                    ) -> tuple[dict[str, str], bool]:
    """(what the hostile job reached, whether the worker says it was sandboxed)."""
    runner = JobRunner(replace(TEST_JOBS, sandbox=mode), work_root=node.data_dir / "jobs",
                       python=python, hidden=(node.data_dir,))
    await nursery.start(runner.run)
    job_id = runner.submit(_job())
    with trio.fail_after(JOB_WAIT_S):
        result = await runner.wait(job_id)
    return dict(result.info["attempts"]), runner.status(job_id).progress["sandbox"]


def _skip_without_namespaces() -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"the kernel refuses namespaces here: {reason}")


async def test_a_sandboxed_job_reaches_neither_the_node_nor_the_network(
        nursery: trio.Nursery, fake_node: FakeNode, tmp_path: Path) -> None:
    _skip_without_namespaces()
    attempts, sandboxed = await _attempts(nursery, fake_node,
                                          _hostile_python(tmp_path, fake_node), "required")
    assert sandboxed
    assert attempts == {
        "key_file": "No such file or directory",  # an empty tmpfs covers the data dir
        # /proc holds only the worker (without that cover, the user namespace still
        # denies it: Permission denied)
        "key_via_parent_root": "No such file or directory",
        "control_socket": "No such file or directory",
        "tcp_listener": "Network is unreachable",  # a new network namespace, loopback down
        "work_dir": "ok",  # the work dir inside the data dir is bound back
    }


async def test_without_the_sandbox_the_same_job_reaches_everything(
        nursery: trio.Nursery, fake_node: FakeNode, tmp_path: Path) -> None:
    attempts, sandboxed = await _attempts(nursery, fake_node,
                                          _hostile_python(tmp_path, fake_node), "off")
    assert not sandboxed
    assert attempts == {"key_file": "ok", "key_via_parent_root": "ok",
                        "control_socket": "ok", "tcp_listener": "ok", "work_dir": "ok"}


def _refusing_python(folder: Path) -> str:
    """A python for which the kernel refuses namespaces: the probe fails as it would there
    (workers themselves start normally)."""
    script = folder / "no-namespaces-python"
    script.write_text("#!/bin/sh\nif [ \"$3\" = prsm_node.jobs.sandbox ]; then\n"
                      "  echo 'sandbox unshare: Operation not permitted'; exit 1\nfi\n"
                      f"exec '{sys.executable}' \"$@\"\n")
    script.chmod(0o700)
    return str(script)


async def test_required_refuses_jobs_where_the_kernel_refuses_namespaces(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    runner = JobRunner(replace(TEST_JOBS, sandbox="required"), work_root=tmp_path,
                       python=_refusing_python(tmp_path))
    await nursery.start(runner.run)
    early = runner.submit(_job())  # queued before the probe answered: fails, never runs
    status = await runner.sandbox_decided()
    assert (status.mode, status.active) == ("required", False)
    with pytest.raises(JobRefused, match=r"sandbox = required.*Operation not permitted"):
        await runner.wait(early)
    assert "Operation not permitted" in status.reason
    with pytest.raises(JobRefused, match=r"sandbox = required.*Operation not permitted"):
        runner.submit(_job())


async def test_auto_runs_unsandboxed_where_the_kernel_refuses_and_says_so(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    runner = JobRunner(replace(TEST_JOBS, sandbox="auto"), work_root=tmp_path,
                       python=_refusing_python(tmp_path))
    await nursery.start(runner.run)
    status = await runner.sandbox_decided()
    assert (status.mode, status.active) == ("auto", False)
    assert "Operation not permitted" in status.reason
    job_id = runner.submit(_job())
    with trio.fail_after(JOB_WAIT_S):
        await runner.wait(job_id)
    assert runner.status(job_id).progress["sandbox"] is False
