"""Read-only queries of the job market, for the node (control API, CLI, worker runtime).

Rules:
1. Pure reads of one ``LedgerState``: nothing here changes the state, and every answer is
   what the state holds after its last block (the node reads its committed head).
2. Lists come in a fixed order, (submission time, job id) for jobs and key order for
   workers, and are cut at ``limit`` (default ``JOB_QUERY_MAX``) so one call stays bounded.
   The job scans are O(jobs in the state), bounded by ``params.jobs_max``: a query is rare
   beside a block, so no per-submitter index is kept in consensus state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.job_records import Job, JobStatus, Model, Worker

if TYPE_CHECKING:
    from consensus.ledger import LedgerState

JOB_QUERY_MAX = 1_000
"""Jobs one query returns at most (a CLI page; the control API frames stay small)."""


class JobQueries:
    """Mixin of ``LedgerState``: the queries below."""

    __slots__ = ()

    def job(self: LedgerState, job_id: bytes) -> Job | None:
        """The job record (status, assignee, result, deadlines, escrow), or None when the
        id is unknown or its record expired (``params.job_retention_ms`` after it ended)."""
        return self.jobs.get(job_id)

    def model(self: LedgerState, cid: str) -> Model | None:
        return self.models.get(cid)

    def worker(self: LedgerState, key: bytes) -> Worker | None:
        return self.workers.get(key)

    def workers_for_model(self: LedgerState, cid: str) -> tuple[bytes, ...]:
        """Keys of every worker listing the model (sorted), eligible or not."""
        return self._model_workers.get(cid, ())

    def eligible_workers(self: LedgerState, cid: str) -> tuple[bytes, ...]:
        """Workers a job for ``cid`` submitted now could be assigned to (before ranking,
        and before excluding the submitter)."""
        return tuple(k for k in self._model_workers.get(cid, ()) if self._eligible(k, cid))

    def assignee_now(self: LedgerState, job_id: bytes) -> bytes | None:
        """The worker whose turn it is, while the job is assigned; None otherwise. A turn
        that has ended (``job.timer_ms`` passed) moves at the next block."""
        job = self.jobs.get(job_id)
        return job.assignee if job is not None and job.status is JobStatus.ASSIGNED else None

    def _jobs_where(self: LedgerState, keep: object, limit: int) -> list[tuple[bytes, Job]]:
        found = [(job.submitted_ms, job_id, job) for job_id, job in self.jobs.items()
                 if keep(job)]  # type: ignore[operator]
        found.sort(key=lambda item: (item[0], item[1]))
        return [(job_id, job) for _, job_id, job in found[:limit]]

    def jobs_by_submitter(self: LedgerState, key: bytes, limit: int = JOB_QUERY_MAX
                          ) -> list[tuple[bytes, Job]]:
        return self._jobs_where(lambda job: job.submitter == key, limit)

    def jobs_by_assignee(self: LedgerState, key: bytes, limit: int = JOB_QUERY_MAX
                         ) -> list[tuple[bytes, Job]]:
        """Jobs whose current (or, once it moved on or ended, last) turn is ``key``'s: the
        assignee, or the worker whose result stands or was judged."""
        return self._jobs_where(lambda job: job.assignee == key, limit)

    def work_for(self: LedgerState, key: bytes, limit: int = JOB_QUERY_MAX
                 ) -> list[tuple[bytes, Job]]:
        """What worker ``key`` should execute now: jobs assigned to it, and disputed jobs
        it verifies and has not posted for. Each must be posted before ``job.timer_ms``."""
        def keep(job: Job) -> bool:
            if job.status is JobStatus.ASSIGNED:
                return job.assignee == key
            return (job.status is JobStatus.DISPUTED and key in job.verifiers
                    and all(voter != key for voter, _ in job.votes))
        return self._jobs_where(keep, limit)

    def next_timer_ms(self: LedgerState) -> int | None:
        """The earliest block time at which a block, even an empty one, moves a job (turn
        end, deadline, challenge window, verification end); None when no job waits. The
        node proposes an empty block once its clock passes it. Expiry of finished records
        is not included (housekeeping; it rides on later blocks)."""
        return self._timers.first_ms()
