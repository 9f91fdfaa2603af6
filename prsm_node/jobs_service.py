"""The jobs service: this node as a worker of the ledger's job market.

Rules:
1. The ledger is the only source of work: after each committed block the service reads
   ``work_for(own key)`` (assignments, and disputes it verifies and has not voted in) and
   starts every job it is not already working on. A job leaves ``_working`` only once the
   ledger stops listing it, so a job is never run twice by one process; after a restart,
   jobs whose result is on the ledger are no longer listed and are skipped.
2. A job's inputs are the ledger's: the model's manifest and weight files and the input
   file, fetched by CID through the storage service (each block checked against its CID),
   params decoded from the job record, seed from the job id (jobs_records.py), so a
   verifier's re-execution gives the same bytes.
3. Every outcome is posted: ``job_result`` (output CID, SHA-256 of the output bytes) after
   the output is stored, pinned and provided, or ``job_failure`` for a typed error of the
   job (fetch failed, bad spec or model, limit hit, worker failed). Our own bugs propagate.
4. A distill job's output is its student, published with its lineage (manifest names the
   teacher) and, by the assignee only, registered on the ledger with the teacher set; the
   result posted is the student manifest's CID and ``weights_digest`` (jobs_store.py).
5. This node's progress on a job is told to the job's submitter over
   /prsm/job-progress/1.0.0 (jobs_progress.py), which also asks for it on our own jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import structlog
import trio

from consensus import job_tx
from consensus.job_records import Job, JobStatus
from consensus.job_tx import TxHeader
from consensus.tx import TxBody
from prsm_node.jobs.architectures import architecture
from prsm_node.jobs.errors import JobError, JobRefused, JobSpecError, ModelError
from prsm_node.jobs.manifests import describe_model, publish_student
from prsm_node.jobs.process import JobRequest, JobResult
from prsm_node.jobs.runner import JobRunner
from prsm_node.jobs.spec import OUTPUT, STUDENT
from prsm_node.jobs_progress import JobProgress
from prsm_node.jobs_records import decode_params, input_name, job_seed
from prsm_node.jobs_store import (
    ModelFetchError,
    fetch_model_files,
    keep_model,
    weights_digest,
)
from prsm_node.ledger_service import LedgerService, TxFailed
from prsm_node.net.wire import Wire
from prsm_node.storage_service import FetchesBusy, StorageService
from storage.cid import Cid
from storage.errors import InvalidDataError
from storage.unixfs import add_chunks, read_file

log = structlog.get_logger(__name__)

INPUT_SIZE_MAX = 256 * 1024 * 1024
"""An input file read into memory at most (the runner's own input limit is the real one)."""
POST_WAIT_S = 60.0
"""How long a result transaction may take to commit before the service gives up on it (the
ledger then passes the job on when the turn ends)."""
STUDENT_TEACHER_SHARE_BPS = 5_000
"""Half of a student's royalty goes to its teacher's owner: the teacher did half the work."""
LOCAL_FINISHED_MAX = 256


class JobInputError(Exception):
    """A job's model or input could not be fetched or read: the job fails, not the node."""


@dataclass(slots=True)
class LocalJob:
    """What this node knows of a job it works on, beyond the ledger."""

    role: str  # "worker" or "verifier"
    state: str = "fetching"  # fetching, running, posting, posted, failed
    progress: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    student: str = ""
    wall_seconds: float = 0.0  # the worker process's, torch import included
    cpu_seconds: float = 0.0


class JobsService:
    def __init__(self, *, ledger: LedgerService, storage: StorageService, runner: JobRunner,
                 wire: Wire) -> None:
        self._ledger, self._storage, self.runner = ledger, storage, runner
        self.progress = JobProgress(wire=wire, ledger=ledger, local_status=self.local_status,
                                    penalise=storage.peers.penalise)
        self.key = ledger.signer.public_key
        self._working: set[bytes] = set()
        self.local: dict[bytes, LocalJob] = {}
        self.counters = {"started": 0, "posted": 0, "failed": 0, "post_failed": 0}

    def statistics(self) -> dict[str, Any]:
        sandbox = self.runner.sandbox_status()
        return {"working": len(self._working), **self.counters,
                "progress": dict(self.progress.counters),
                "sandbox": {"mode": sandbox.mode, "active": sandbox.active,
                            "reason": sandbox.reason}}

    def local_status(self, job_id: bytes) -> dict[str, Any] | None:
        """This node's progress on a job it works on, or None."""
        local = self.local.get(job_id)
        if local is None:
            return None
        progress = dict(local.progress)
        if local.state == "running":
            with contextlib.suppress(KeyError):  # the runner forgot it: keep the last copy
                progress = dict(self.runner.status(job_id.hex()).progress)
        return {"role": local.role, "state": local.state, "progress": progress,
                "error": local.error, "student": local.student,
                "wall_seconds": local.wall_seconds, "cpu_seconds": local.cpu_seconds}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.progress.register()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.runner.run)
            nursery.start_soon(self._follow, nursery)
            log.info("jobs.started", worker=self.key.hex()[:16])
            task_status.started()

    async def _follow(self, nursery: trio.Nursery) -> None:
        seen = -1
        while True:
            seen = await self._ledger.wait_new_height(seen)
            work = self._ledger.ledger().work_for(self.key)
            listed = {job_id for job_id, _ in work}
            self._working &= listed | {j for j, local in self.local.items()
                                       if local.state in ("fetching", "running", "posting")}
            for job_id, job in work:
                if job_id not in self._working:
                    self._working.add(job_id)
                    self.counters["started"] += 1
                    nursery.start_soon(self._work, job_id, job)

    async def _work(self, job_id: bytes, job: Job) -> None:
        role = "verifier" if job.status is JobStatus.DISPUTED else "worker"
        local = self.local[job_id] = LocalJob(role=role)
        self._trim_local()
        log.info("jobs.work_started", job=job_id.hex()[:16], kind=job.job_kind.value, role=role)
        try:
            request = await self._request(job_id, job)
            local.state = "running"
            result = await self._execute(job_id, request)
            local.progress = dict(self.runner.status(job_id.hex()).progress)
            local.wall_seconds, local.cpu_seconds = result.wall_seconds, result.cpu_seconds
            local.state = "posting"
            output_cid, digest = await self._store_output(job_id, job, result, local)
        except (JobInputError, JobError, JobSpecError, JobRefused, ModelError) as error:
            local.state, local.error = "failed", str(error)[:400]
            self.counters["failed"] += 1
            log.warning("jobs.work_failed", job=job_id.hex()[:16], error=local.error)
            await self._post(job_id, lambda h: job_tx.job_failure(h, job=job_id))
            return
        await self._post(job_id, lambda h: job_tx.job_result(
            h, job=job_id, output_cid=str(output_cid), output_sha256=digest))
        local.state = "posted"
        log.info("jobs.result_posted", job=job_id.hex()[:16], output=str(output_cid))

    def _trim_local(self) -> None:
        while len(self.local) > LOCAL_FINISHED_MAX:
            oldest = next(iter(self.local))
            if self.local[oldest].state not in ("posted", "failed"):
                return
            del self.local[oldest]

    async def _fetch(self, text: str, *, pin: bool) -> Cid:
        try:
            root = Cid.parse(text)
        except InvalidDataError as error:
            raise JobInputError(f"{text}: not a CID: {error}") from None
        try:
            outcome = await self._storage.fetch(root, pin=pin)
        except FetchesBusy as error:
            raise JobInputError(f"could not fetch {text} now: {error}") from None
        if not outcome.complete:
            raise JobInputError(f"could not fetch {text}: {outcome.reason}")
        return root

    async def _request(self, job_id: bytes, job: Job) -> JobRequest:
        """Rule 2: everything the job needs, from the ledger record and the store."""
        try:
            files = await fetch_model_files(self._storage, Cid.parse(job.model), pin=True)
        except (ModelFetchError, InvalidDataError) as error:
            raise JobInputError(f"model {job.model}: {error}") from None
        input_cid = await self._fetch(job.input, pin=False)
        try:
            data = await self._storage.in_thread(
                lambda: read_file(input_cid, self._storage.store.get, size_max=INPUT_SIZE_MAX))
        except InvalidDataError as error:
            raise JobInputError(f"input {job.input}: {error}") from None
        task = architecture(describe_model(files.manifest).architecture).task
        kind = job.job_kind.value
        role = "model" if kind == "inference" else "teacher"
        return JobRequest(kind=kind, models={role: files}, inputs={input_name(kind, task): data},
                          params=decode_params(job.params), seed=job_seed(job_id))

    async def _execute(self, job_id: bytes, request: JobRequest) -> JobResult:
        runner_id = self.runner.submit(request, job_id=job_id.hex())
        return await self.runner.wait(runner_id)

    async def _store_output(self, job_id: bytes, job: Job, result: JobResult, local: LocalJob
                            ) -> tuple[Cid, bytes]:
        """Rule 3/4: store, pin and provide the output; (its CID, its SHA-256)."""
        put = self._storage.put
        if job.job_kind.value == "inference":
            data = result.outputs[OUTPUT]
            root = await self._storage.in_thread(lambda: add_chunks([data], put).root)
            await self._storage.in_thread(self._storage.store.pin, root)
            await self._storage.provide(root)
            return root, sha256(data).digest()
        weights = result.outputs[STUDENT]
        student = await self._storage.in_thread(lambda: publish_student(
            put, name=f"student-{job_id.hex()[:12]}", owner=self.key,
            teacher=Cid.parse(job.model), weights=weights, info=result.info))
        local.student = str(student.cid)
        await keep_model(self._storage, student)
        if local.role == "worker":
            await self._register_student(job, str(student.cid))
        return student.cid, weights_digest(student)

    async def _register_student(self, job: Job, student: str) -> None:
        teacher = self._ledger.ledger().model(job.model)
        royalty_bps, price = (teacher.royalty_bps, teacher.price) if teacher else (0, 0)
        await self._post(b"", lambda h: job_tx.model_register(
            h, model=student, royalty_bps=royalty_bps, price=price, teacher=job.model,
            teacher_share_bps=STUDENT_TEACHER_SHARE_BPS))

    async def _post(self, job_id: bytes, build: Callable[[TxHeader], TxBody]) -> None:
        try:
            await self._ledger.submit_built(build, POST_WAIT_S)
            self.counters["posted"] += 1
        except TxFailed as error:
            self.counters["post_failed"] += 1
            log.warning("jobs.post_failed", job=job_id.hex()[:16], reason=error.reason_code,
                        error=str(error))
