"""The job runner: a bounded FIFO queue in front of at most ``jobs.max_concurrent`` workers.

Rules:
1. ``submit`` checks a job completely before queuing it (kind allowed here, params, model
   roles, inputs: ``process.check_request``) and refuses past ``jobs.queue_max`` waiting
   jobs (``JobRefused``). The count is exact and decided in ``submit`` itself (no
   checkpoint), so it never depends on whether a worker task has woken up yet.
2. ``max_concurrent`` tasks take jobs from the queue in submission order (a deque; a
   semaphore counts the wake-ups); a cancelled queued job leaves the queue at once. Each
   job runs in its own worker process (process.py) under the node's limits, or the job's
   own where they are tighter.
3. Each job has one state (``JobState``) and moves only along ``_TRANSITIONS``; finished
   records (with their outputs) are kept for ``wait`` and ``status`` up to
   ``FINISHED_MAX``, oldest evicted first.
4. A job's failure is the job's: the runner logs it, records it, raises it from ``wait``,
   and goes on with the next job. Cancelling a job kills its worker (process.py reaps it).
5. Isolation is decided once, when the runner starts (``jobs.sandbox``): ``off`` runs
   workers without a sandbox; otherwise a probe process tries one (sandbox.py). Where the
   kernel refuses, ``auto`` runs without and warns once, ``required`` refuses every job.
   ``sandbox_status()`` says which, for the node's statistics: never a silent claim. The
   probe runs beside the runner's start, not before it; jobs queue until it answers.
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog
import trio

from prsm_node.config import JobsSection
from prsm_node.jobs.errors import (
    JobCancelled,
    JobError,
    JobLimitExceeded,
    JobRefused,
    UnknownJob,
)
from prsm_node.jobs.process import JobLimits, JobRequest, JobResult, check_request, run_worker
from prsm_node.jobs.sandbox import probe

log = structlog.get_logger(__name__)

FINISHED_MAX = 256
"""Finished jobs remembered (outputs included) for ``wait`` and ``status``: a few minutes
of a busy node's work; the node stores outputs in the block store long before."""


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


_TRANSITIONS = {
    JobState.QUEUED: {JobState.RUNNING, JobState.CANCELLED},
    JobState.RUNNING: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED},
    JobState.COMPLETED: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatus:
    """A snapshot of one job."""

    job_id: str
    kind: str
    state: JobState
    progress: Mapping[str, Any]  # the worker's last phase or progress event
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxStatus:
    """Whether workers run isolated (rule 5), and why not when they do not."""

    mode: str  # jobs.sandbox: auto, required or off
    active: bool
    reason: str  # empty when active


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerStatistics:
    queued: int
    running: int
    completed: int
    failed: int
    cancelled: int
    limit_exceeded: int


@dataclass(slots=True, kw_only=True)
class _Job:
    job_id: str
    request: JobRequest
    params: dict[str, Any]
    state: JobState = JobState.QUEUED
    progress: dict[str, Any] = field(default_factory=dict)
    result: JobResult | None = None
    error: JobError | JobRefused | None = None
    on_event: Callable[[dict[str, Any]], None] | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    finished: trio.Event = field(default_factory=trio.Event)

    def record(self, event: dict[str, Any]) -> None:
        """A worker event (started, phase, progress): kept for ``status``, passed on."""
        self.progress.update(event)
        if self.on_event is not None:
            self.on_event(event)

    def move(self, state: JobState) -> None:
        assert state in _TRANSITIONS[self.state], (self.job_id, self.state, state)
        self.state = state


class JobRunner:
    """Runs jobs in worker processes; start with ``await nursery.start(runner.run)``."""

    def __init__(self, settings: JobsSection, *, work_root: Path | None = None,
                 python: str = sys.executable, hidden: tuple[Path, ...] = ()) -> None:
        """``hidden``: dirs a sandboxed worker must not see (the node's data dir)."""
        self._settings = settings
        self._hidden = hidden
        self._sandbox = SandboxStatus(mode=settings.sandbox, active=False,
                                      reason="not decided yet (the probe runs at start)")
        self._sandbox_decided = trio.Event()
        self._limits = JobLimits.from_section(settings)
        self._work_root = work_root
        self._python = python
        self._queue: deque[_Job] = deque()
        self._queue_signal = trio.Semaphore(0)
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._ids = itertools.count(1)
        self._counts = {state: 0 for state in JobState}
        self._limit_exceeded = 0
        self._running = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve jobs until cancelled; running workers are killed and reaped on the way out.
        Ready at once: the sandbox probe (a process start, seconds on a loaded machine) runs
        meanwhile and only the workers wait for it, so it never delays the node's start."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._decide_sandbox)
                for _ in range(self._settings.max_concurrent):
                    nursery.start_soon(self._serve)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            self._queue.clear()
            for job in list(self._jobs.values()):  # _finish evicts old records
                if not job.finished.is_set():
                    self._finish(job, JobState.CANCELLED,
                                 error=JobCancelled(f"{job.job_id}: the runner stopped"))

    async def _decide_sandbox(self) -> None:
        self._sandbox = await self._sandbox_decision()
        self._sandbox_decided.set()

    async def _sandbox_decision(self) -> SandboxStatus:
        """Rule 5, logged once."""
        mode = self._settings.sandbox
        if mode == "off":
            log.warning("jobs.sandbox_off", detail="jobs.sandbox = off: workers can read "
                        "the node's data dir and reach the network")
            return SandboxStatus(mode=mode, active=False, reason="jobs.sandbox = off")
        reason = await trio.to_thread.run_sync(probe, self._python)
        if reason is None:
            log.info("jobs.sandbox_active", mode=mode, hidden=[str(p) for p in self._hidden])
            return SandboxStatus(mode=mode, active=True, reason="")
        if mode == "required":
            log.error("jobs.sandbox_unavailable", mode=mode, reason=reason,
                      detail="jobs.sandbox = required: every job is refused")
        else:
            log.warning("jobs.sandbox_unavailable", mode=mode, reason=reason,
                        detail="workers run without isolation")
        return SandboxStatus(mode=mode, active=False, reason=reason)

    def sandbox_status(self) -> SandboxStatus:
        return self._sandbox

    async def sandbox_decided(self) -> SandboxStatus:
        """The status once the start-up probe has answered."""
        await self._sandbox_decided.wait()
        return self._sandbox

    def _sandbox_refusal(self) -> JobRefused | None:
        """Under ``required``, once the probe said no (rule 5); before it answers, jobs
        queue and the workers wait for the answer."""
        if (self._sandbox.mode == "required" and self._sandbox_decided.is_set()
                and not self._sandbox.active):
            return JobRefused("jobs.sandbox = required, but workers cannot be isolated "
                              f"here: {self._sandbox.reason}")
        return None

    def submit(self, request: JobRequest, *, job_id: str | None = None,
               on_event: Callable[[dict[str, Any]], None] | None = None) -> str:
        """Check and queue a job (rule 1); returns its id. ``on_event`` gets each of the
        worker's events as it arrives (e.g. to relay progress to a client)."""
        if not self._running:
            raise JobRefused("the job runner is not running")
        refusal = self._sandbox_refusal()
        if refusal is not None:
            raise refusal
        if request.kind not in self._settings.kinds:
            raise JobRefused(f"this node does not run {request.kind} jobs")
        job_id = job_id or f"job-{next(self._ids)}"
        if job_id in self._jobs:
            raise JobRefused(f"job id {job_id!r} is already in use")
        if len(self._queue) >= self._settings.queue_max:
            raise JobRefused(f"the job queue is full ({self._settings.queue_max} waiting)")
        job = _Job(job_id=job_id, request=request, params=check_request(request),
                   on_event=on_event)
        self._queue.append(job)
        self._queue_signal.release()
        self._jobs[job_id] = job
        self._counts[JobState.QUEUED] += 1
        log.info("jobs.queued", job=job_id, kind=request.kind)
        return job_id

    def _job(self, job_id: str) -> _Job:
        if job_id not in self._jobs:
            raise UnknownJob(job_id)
        return self._jobs[job_id]

    def status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        return JobStatus(job_id=job_id, kind=job.request.kind, state=job.state,
                         progress=MappingProxyType(dict(job.progress)),
                         error=None if job.error is None else str(job.error))

    async def wait(self, job_id: str) -> JobResult:
        """The job's result once it finishes, or its typed error (``JobError``)."""
        job = self._job(job_id)
        await job.finished.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    async def execute(self, request: JobRequest) -> JobResult:
        """Submit and wait."""
        return await self.wait(self.submit(request))

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False if it had already finished."""
        job = self._job(job_id)
        if job.state not in (JobState.QUEUED, JobState.RUNNING):
            return False
        if job.state is JobState.QUEUED:
            self._queue.remove(job)
            self._finish(job, JobState.CANCELLED, error=JobCancelled(f"{job_id} cancelled"))
        job.scope.cancel()
        return True

    def statistics(self) -> RunnerStatistics:
        return RunnerStatistics(
            queued=self._counts[JobState.QUEUED], running=self._counts[JobState.RUNNING],
            completed=self._counts[JobState.COMPLETED], failed=self._counts[JobState.FAILED],
            cancelled=self._counts[JobState.CANCELLED], limit_exceeded=self._limit_exceeded)

    def _finish(self, job: _Job, state: JobState, *, result: JobResult | None = None,
                error: JobError | JobRefused | None = None) -> None:
        self._counts[job.state] -= 1
        job.move(state)
        self._counts[state] += 1
        job.result, job.error = result, error
        job.finished.set()
        finished = [key for key, other in self._jobs.items() if other.finished.is_set()]
        for key in finished[:max(0, len(finished) - FINISHED_MAX)]:
            del self._jobs[key]

    async def _serve(self) -> None:
        await self._sandbox_decided.wait()
        while True:
            await self._queue_signal.acquire()
            if self._queue:  # empty when the job this signal was for was cancelled
                await self._run(self._queue.popleft())

    async def _run(self, job: _Job) -> None:
        self._counts[JobState.QUEUED] -= 1
        job.move(JobState.RUNNING)
        self._counts[JobState.RUNNING] += 1
        limits = job.request.limits.within(self._limits) if job.request.limits else \
            self._limits
        log.info("jobs.started", job=job.job_id, kind=job.request.kind)
        refusal = self._sandbox_refusal()
        if refusal is not None:  # queued before the probe said no
            self._finish(job, JobState.FAILED, error=refusal)
            log.warning("jobs.refused", job=job.job_id, reason=str(refusal))
            return
        result = error = None
        with job.scope:
            try:
                result = await run_worker(job.request, params=job.params, limits=limits,
                                          device=self._settings.device,
                                          work_root=self._work_root, python=self._python,
                                          sandbox=self._hidden if self._sandbox.active
                                          else None,
                                          on_event=job.record)
            except JobError as failure:
                error = failure
        if job.scope.cancelled_caught:
            self._finish(job, JobState.CANCELLED, error=JobCancelled(f"{job.job_id} cancelled"))
            log.info("jobs.cancelled", job=job.job_id)
        elif error is not None:
            self._limit_exceeded += isinstance(error, JobLimitExceeded)
            self._finish(job, JobState.FAILED, error=error)
            log.warning("jobs.failed", job=job.job_id, error_type=type(error).__name__,
                        limit=getattr(error, "limit", None), message=str(error))
        else:
            assert result is not None
            self._finish(job, JobState.COMPLETED, result=result)
            log.info("jobs.completed", job=job.job_id, wall_s=round(result.wall_seconds, 3),
                     cpu_s=round(result.cpu_seconds, 3), rss_max_bytes=result.rss_max_bytes)
