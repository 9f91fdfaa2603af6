"""One job in one worker process: work dir, spawn, watch, collect, clean up (node side).

Rules:
1. The work dir is a fresh ``mkdtemp`` (mode 0700) under ``work_root`` (default: the
   system temp dir, outside the node's data dir, so no relative path from it reaches the
   key or the socket). It is removed when the job ends, whatever the outcome.
2. The worker gets a scrubbed environment (no PRSM_HOME, nothing of the node's), no
   inherited descriptors but its pipes, the work dir as cwd, its own session (process
   group), and ``-I`` (isolated mode: no PYTHON* variables, no user site, no cwd on
   sys.path). With ``sandbox`` (the runner's decision, runner.py rule 5) it also gets
   ``--sandbox`` and the dirs to hide, and isolates itself before it reads the job
   (sandbox.py); a worker that cannot fails the job, it never runs unisolated.
3. Limits: the worker sets its rlimits itself (worker.py, rule 1); here the parent enforces
   the wall clock (``trio.move_on_after``) and resident memory and CPU time of the whole
   process tree (psutil, every ``WATCH_INTERVAL_S``). Any limit kills the process group
   with SIGKILL. The parent always reaps the worker, even when cancelled.
4. The outcome is decided in one place (``_outcome``), in this order: a limit the parent
   saw, the kernel's CPU limit (SIGXCPU), the worker's error line, a protocol violation,
   a death without a result; only then are the outputs read, each a regular file no larger
   than the memory limit, named as the job kind promises, with a valid safetensors header.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog
import trio

from prsm_node.config import JobsSection
from prsm_node.jobs.errors import (
    JobFailed,
    JobLimitExceeded,
    JobSpecError,
    ModelError,
    TensorFileError,
)
from prsm_node.jobs.manifests import ModelFiles, check_weights
from prsm_node.jobs.spec import (
    CPU_HARD_GRACE_SECONDS,
    INPUTS_DIR,
    MANIFEST_FILE,
    MODELS_DIR,
    OUTPUTS,
    OUTPUTS_DIR,
    TMP_DIR,
    JobSpec,
    WorkerLimits,
    check_params,
)
from prsm_node.jobs.tensorfile import parse_header
from storage.manifest import encode_manifest

log = structlog.get_logger(__name__)

WATCH_INTERVAL_S = 0.1
"""psutil samples per second: RSS can overshoot the limit by what the job allocates in
100 ms before it is killed; RLIMIT_AS stops a single huge allocation at once."""
LINE_SIZE_MAX = 64 * 1024
STDERR_TAIL_BYTES = 4096
PASSED_ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")
"""Chosen GPUs and the driver's library path; nothing else of the node's environment."""
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class JobLimits:
    cpu_seconds: int
    memory_mb: int
    wall_seconds: float
    threads: int

    @classmethod
    def from_section(cls, section: JobsSection) -> JobLimits:
        return cls(cpu_seconds=section.cpu_seconds, memory_mb=section.memory_mb,
                   wall_seconds=section.wall_seconds, threads=section.threads)

    def within(self, node: JobLimits) -> JobLimits:
        """These limits, never looser than the node's."""
        return JobLimits(cpu_seconds=min(self.cpu_seconds, node.cpu_seconds),
                         memory_mb=min(self.memory_mb, node.memory_mb),
                         wall_seconds=min(self.wall_seconds, node.wall_seconds),
                         threads=min(self.threads, node.threads))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    """A job as the node submits it; see spec.py for kinds, inputs and params."""

    kind: str
    models: Mapping[str, ModelFiles]  # by role: "model" (inference) or "teacher" (distill)
    inputs: Mapping[str, bytes]  # by file name: input.safetensors, prompts.json, ...
    params: Mapping[str, Any]
    seed: int = 0
    limits: JobLimits | None = None  # tighter than the node's, e.g. from the job's price


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    outputs: Mapping[str, bytes]  # by file name: output.safetensors or student.safetensors
    info: Mapping[str, Any]  # the worker's ``done`` info (hardware, lineage, ...)
    wall_seconds: float
    cpu_seconds: float
    rss_max_bytes: int


def check_request(request: JobRequest) -> dict[str, Any]:
    """The request's params with defaults, after checking every part that needs no torch:
    each model's weight files against its manifest and architecture, the kind, the model
    roles, the input names and the params. The worker checks it all again."""
    try:
        described = {role: check_weights(files.manifest, files.files)
                     for role, files in request.models.items()}
    except ModelError as error:
        raise JobSpecError("models", str(error)) from None
    return check_params(request.kind, {role: (d.architecture, d.config)
                                       for role, d in described.items()},
                        set(request.inputs), request.params)


def write_work_dir(work: Path, request: JobRequest, spec: JobSpec) -> None:
    """The fixed layout of spec.py (rule 2 there); names come from checked manifests."""
    for folder in (MODELS_DIR, INPUTS_DIR, OUTPUTS_DIR, TMP_DIR):
        (work / folder).mkdir(mode=0o700)
    for role, model in request.models.items():
        folder = work / MODELS_DIR / role
        folder.mkdir(mode=0o700)
        (folder / MANIFEST_FILE).write_bytes(encode_manifest(model.manifest))
        for name, data in model.files.items():
            (folder / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    for name, data in request.inputs.items():
        (work / INPUTS_DIR / name).write_bytes(data)
    (work / "job.json").write_text(json.dumps(spec.to_json()))


def worker_environment(work: Path, threads: int) -> dict[str, str]:
    environment = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
    return environment | {
        "PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work / TMP_DIR),
        "LANG": "C.UTF-8", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # deterministic cuBLAS (torch docs)
    }


@dataclass(slots=True)
class _Watch:
    """What the parent learned about one worker while it ran."""

    limit: str | None = None
    limit_detail: str = ""
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    protocol_error: str | None = None
    rss_max_bytes: int = 0
    cpu_seconds: float = 0.0

    def hit(self, limit: str, detail: str) -> None:
        if self.limit is None:
            self.limit, self.limit_detail = limit, detail


def _kill_group(process: trio.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _sample(root: psutil.Process) -> tuple[int, float]:
    """(resident bytes, CPU seconds) of a process and its descendants."""
    rss, cpu = 0, 0.0
    for member in [root, *root.children(recursive=True)]:
        with member.oneshot():
            rss += member.memory_info().rss
            times = member.cpu_times()
        cpu += times.user + times.system
    return rss, cpu


async def _watch_resources(process: trio.Process, limits: JobLimits, watch: _Watch) -> None:
    """Rule 3: kill the group past the memory or CPU limit; returns when the worker is gone."""
    try:
        root = psutil.Process(process.pid)
        while True:
            rss, cpu = _sample(root)
            watch.rss_max_bytes = max(watch.rss_max_bytes, rss)
            watch.cpu_seconds = cpu
            if rss > limits.memory_mb * MIB:
                watch.hit("memory", f"resident {rss // MIB} MiB > {limits.memory_mb} MiB")
            elif cpu > limits.cpu_seconds + CPU_HARD_GRACE_SECONDS:  # the kernel comes first
                watch.hit("cpu", f"{cpu:.1f} CPU seconds > {limits.cpu_seconds}")
            if watch.limit is not None:
                _kill_group(process)
                return
            await trio.sleep(WATCH_INTERVAL_S)
    except psutil.NoSuchProcess:  # exited (or a zombie) between two samples
        return


def _handle_line(line: bytes, watch: _Watch, on_event: Callable[[dict[str, Any]], None]) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        watch.protocol_error = f"not a JSON event line: {line[:200]!r}"
        return
    kind = event["event"]
    if kind == "done":
        watch.done = event
        on_event({"event": "done"})  # the payload comes back in the JobResult
    elif kind == "error":
        watch.error = event
    else:
        on_event(event)


async def _read_events(process: trio.Process, watch: _Watch,
                       on_event: Callable[[dict[str, Any]], None]) -> None:
    """JSON lines from the worker's stdout until EOF; a line over LINE_SIZE_MAX or one that
    is not an event stops the worker."""
    assert process.stdout is not None
    buffer = bytearray()
    while watch.protocol_error is None:
        chunk = await process.stdout.receive_some(LINE_SIZE_MAX)
        if not chunk:
            return
        *lines, rest = (bytes(buffer) + chunk).split(b"\n")
        buffer = bytearray(rest)
        for line in lines:
            if watch.protocol_error is None:
                _handle_line(line, watch, on_event)
        if len(buffer) > LINE_SIZE_MAX:
            watch.protocol_error = f"a line longer than {LINE_SIZE_MAX} bytes"
    _kill_group(process)


def _stderr_tail(work: Path) -> str:
    try:
        with open(work / "stderr.log", "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - STDERR_TAIL_BYTES))
            lines = stream.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _read_output(work: Path, name: str, size_max: int) -> bytes:
    try:
        descriptor = os.open(work / OUTPUTS_DIR / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise JobFailed("WorkerProtocolError", f"output {name}: {error}") from None
    with os.fdopen(descriptor, "rb") as stream:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise JobFailed("WorkerProtocolError", f"output {name} is not a regular file")
        data = stream.read(size_max + 1)
    if len(data) > size_max:
        raise JobFailed("WorkerProtocolError", f"output {name} exceeds {size_max} bytes")
    try:
        parse_header(data)
    except TensorFileError as error:
        raise JobFailed("WorkerProtocolError", f"output {name}: {error}") from None
    return data


def _outcome(returncode: int, watch: _Watch, work: Path, kind: str,
             limits: JobLimits) -> dict[str, bytes]:
    """Rule 4: the typed error, or the outputs."""
    if watch.limit is not None:
        raise JobLimitExceeded(watch.limit, watch.limit_detail)
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL
                                         and watch.cpu_seconds >= limits.cpu_seconds):
        raise JobLimitExceeded("cpu", f"more than {limits.cpu_seconds} CPU seconds")
    if watch.error is not None:
        message = str(watch.error.get("message", ""))
        if watch.error.get("limit") == "memory":
            raise JobLimitExceeded("memory", f"allocation failed within {limits.memory_mb} "
                                   f"MiB: {message[:300]}")
        raise JobFailed(str(watch.error.get("type", "Error")), message)
    if watch.protocol_error is not None:
        raise JobFailed("WorkerProtocolError", watch.protocol_error)
    if returncode != 0 or watch.done is None:
        raise JobFailed("WorkerDied", f"exit status {returncode} without a result; "
                        f"stderr: {_stderr_tail(work)}")
    if watch.done.get("outputs") != list(OUTPUTS[kind]):
        raise JobFailed("WorkerProtocolError", f"outputs {watch.done.get('outputs')!r}, "
                        f"expected {list(OUTPUTS[kind])}")
    return {name: _read_output(work, name, limits.memory_mb * MIB) for name in OUTPUTS[kind]}


def worker_command(python: str, sandbox: Sequence[Path] | None) -> list[str]:
    """The worker's argv; ``sandbox`` is None (no sandbox) or the dirs it must hide."""
    command = [python, "-I", "-m", "prsm_node.jobs.worker"]
    if sandbox is not None:
        command += ["--sandbox", *(str(folder) for folder in sandbox)]
    return command


async def run_worker(request: JobRequest, *, params: Mapping[str, Any], limits: JobLimits,
                     device: str, work_root: Path | None = None, python: str = sys.executable,
                     sandbox: Sequence[Path] | None = None,
                     on_event: Callable[[dict[str, Any]], None] = lambda event: None
                     ) -> JobResult:
    """Run one checked job (``params`` from ``check_request``) in a fresh worker process,
    in a sandbox hiding the ``sandbox`` dirs unless that is None."""
    spec = JobSpec(kind=request.kind, seed=request.seed, device=device,
                   inputs=tuple(sorted(request.inputs)), params=dict(params),
                   limits=WorkerLimits(cpu_seconds=limits.cpu_seconds,
                                       memory_bytes=limits.memory_mb * MIB,
                                       threads=limits.threads))
    try:
        work = Path(tempfile.mkdtemp(prefix="prsm-job-", dir=work_root))
    except OSError as error:
        raise JobFailed("WorkDirError", str(error)) from None
    try:
        started = trio.current_time()
        watch = _Watch()
        try:
            await trio.to_thread.run_sync(write_work_dir, work, request, spec)
            returncode = await _supervise(work, limits, worker_command(python, sandbox),
                                          watch, on_event)
        except OSError as error:  # a full disk, a python that is not there: not our bug
            raise JobFailed("WorkerStartError", str(error)) from None
        wall = trio.current_time() - started
        outputs = await trio.to_thread.run_sync(_outcome, returncode, watch, work,
                                                request.kind, limits)
        return JobResult(outputs=outputs, info=watch.done["info"] if watch.done else {},
                         wall_seconds=wall, cpu_seconds=watch.cpu_seconds,
                         rss_max_bytes=watch.rss_max_bytes)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(shutil.rmtree, work, True)


async def _supervise(work: Path, limits: JobLimits, command: list[str], watch: _Watch,
                     on_event: Callable[[dict[str, Any]], None]) -> int:
    """Start the worker, relay its events under the limits, always reap it (rule 3)."""
    with open(work / "stderr.log", "wb") as stderr:
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr, cwd=work,
            env=worker_environment(work, limits.threads), start_new_session=True)
    log.debug("jobs.worker_started", pid=process.pid, work=str(work))
    try:
        with trio.move_on_after(limits.wall_seconds) as wall:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_resources, process, limits, watch)
                await _read_events(process, watch, on_event)
                await process.wait()
                nursery.cancel_scope.cancel()
        if wall.cancelled_caught:
            watch.hit("wall", f"no result within {limits.wall_seconds} s")
    finally:
        _kill_group(process)
        with trio.CancelScope(shield=True):
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
    return process.returncode
