"""Records of the job market (models, workers, jobs), the job state table and assignment.

Rules:
1. Records are frozen dataclasses with integer amounts; ``to_plain`` is the canonical leaf
   content (the state root covers every field) and ``from_plain`` rebuilds it exactly.
2. A job's status changes only along ``TRANSITIONS`` (one table, below). A transaction
   that asks for a move the table lacks is refused (``job_state``) naming the status and
   the kind; a timer that finds no move there is our bug and asserts.
3. Assignment is a pure function of the job id and the eligible workers:
   ``rank_workers`` orders them by ``sha256(job_id || worker_key)`` (rendezvous hashing,
   Thaler & Ravishankar 1998), so every replica computes the same order and no worker can
   pick its jobs: the job id is the submit transaction's hash, fixed before any worker
   sees it, and a worker's key is fixed at registration.
4. The price split is fixed at submission (``split_price``): royalty and fee are rounded
   down and the worker gets the rest, so the parts always add up to the price exactly.

Job lifecycle (``JobStatus``; ``queued`` and ``running`` are node-side: a submission not
yet committed, and an assignee's node executing it)::

    job_submit -> ASSIGNED --job_result ok--> COMPLETED --job_accept / window--> ACCEPTED
                  |  ^  failure or turn timeout     |
                  |  +---- next ranked worker       +--job_dispute--> DISPUTED --votes /
                  +-- deadline, or no worker left --> REFUNDED | FAILED    timeout--> ACCEPTED
                                                                                  | REFUNDED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from consensus.codec import amount_from_bytes, amount_to_bytes, canonical, sha256
from consensus.errors import TxRejected
from consensus.job_args import BPS_MAX, JobKind, ParamValue


class JobStatus(enum.Enum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    DISPUTED = "disputed"
    FAILED = "failed"
    REFUNDED = "refunded"


TERMINAL = frozenset({JobStatus.ACCEPTED, JobStatus.FAILED, JobStatus.REFUNDED})


class JobEvent(enum.Enum):
    RESULT_OK = "job_result (ok)"
    RESULT_FAILED = "job_result (failure)"
    ACCEPT = "job_accept"
    DISPUTE = "job_dispute"
    VOTE = "job_result (verifier)"
    TURN_TIMEOUT = "turn timeout or deadline"
    WINDOW_PASSED = "challenge window passed"
    VOTE_TIMEOUT = "verification timeout"


TRANSITIONS: dict[tuple[JobStatus, JobEvent], frozenset[JobStatus]] = {
    (JobStatus.ASSIGNED, JobEvent.RESULT_OK): frozenset({JobStatus.COMPLETED}),
    (JobStatus.ASSIGNED, JobEvent.RESULT_FAILED): frozenset({
        JobStatus.ASSIGNED, JobStatus.FAILED, JobStatus.REFUNDED}),
    (JobStatus.ASSIGNED, JobEvent.TURN_TIMEOUT): frozenset({
        JobStatus.ASSIGNED, JobStatus.FAILED, JobStatus.REFUNDED}),
    (JobStatus.COMPLETED, JobEvent.ACCEPT): frozenset({JobStatus.ACCEPTED}),
    (JobStatus.COMPLETED, JobEvent.WINDOW_PASSED): frozenset({JobStatus.ACCEPTED}),
    (JobStatus.COMPLETED, JobEvent.DISPUTE): frozenset({JobStatus.DISPUTED}),
    (JobStatus.DISPUTED, JobEvent.VOTE): frozenset({
        JobStatus.DISPUTED, JobStatus.ACCEPTED, JobStatus.REFUNDED}),
    (JobStatus.DISPUTED, JobEvent.VOTE_TIMEOUT): frozenset({
        JobStatus.ACCEPTED, JobStatus.REFUNDED}),
}
"""(status, event) -> the statuses it may lead to. Terminal statuses have no moves."""


def require_move(status: JobStatus, event: JobEvent) -> None:
    """Refuse a transaction whose event the table has no move for in ``status``."""
    if (status, event) not in TRANSITIONS:
        raise TxRejected("job_state", f"the job is {status.value}: {event.value} is not "
                         "possible now")


class JobOutcome(enum.Enum):
    """Why a job ended (empty while it is open): what the CLI explains."""

    OPEN = ""
    ACCEPTED = "accepted_by_submitter"
    WINDOW_PASSED = "challenge_window_passed"
    DEADLINE = "deadline_passed"
    NO_WORKER_LEFT = "no_worker_left"
    DISPUTE_UPHELD = "dispute_upheld"
    """A majority of verifiers contradicted the worker: refunded, worker slashed."""
    DISPUTE_REJECTED = "dispute_rejected"
    """A majority confirmed the worker: paid, the bond to the verifiers."""
    DISPUTE_UNDECIDED = "dispute_undecided"
    """No two results agreed: the result stands (paid), the bond goes back."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    owner: bytes
    royalty_bps: int
    price: int
    teacher: str = ""
    teacher_share_bps: int = 0

    def to_plain(self, cid: str) -> list[Any]:
        return [cid, self.owner, self.royalty_bps, amount_to_bytes(self.price), self.teacher,
                self.teacher_share_bps]

    @classmethod
    def from_plain(cls, plain: Any) -> tuple[str, Model]:
        cid, owner, royalty_bps, price, teacher, share = plain
        return str(cid), cls(owner=bytes(owner), royalty_bps=royalty_bps,
                             price=amount_from_bytes(price), teacher=str(teacher),
                             teacher_share_bps=share)


@dataclass(frozen=True, slots=True, kw_only=True)
class Worker:
    stake: int
    models: tuple[str, ...]
    open_jobs: int = 0
    """Posted results not yet settled; the stake cannot leave while any is (slashable)."""

    def to_plain(self, key: bytes) -> list[Any]:
        return [key, amount_to_bytes(self.stake), list(self.models), self.open_jobs]

    @classmethod
    def from_plain(cls, plain: Any) -> tuple[bytes, Worker]:
        key, stake, models, open_jobs = plain
        return bytes(key), cls(stake=amount_from_bytes(stake),
                               models=tuple(str(m) for m in models), open_jobs=open_jobs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job; amounts in base units, times in block milliseconds."""

    submitter: bytes
    model: str
    job_kind: JobKind
    input: str
    params: tuple[tuple[str, ParamValue], ...]
    price: int
    """The model's price at submission: the escrow, split below."""
    owner: bytes
    owner_pay: int
    teacher_owner: bytes
    teacher_pay: int
    fee: int
    """To the validators, as transaction fees are."""
    submitted_ms: int
    deadline_ms: int
    candidates: tuple[bytes, ...]
    """Eligible workers at submission in rank order (``rank_workers``), at most
    ``params.job_candidates_max``: the assignee, then who takes over, then verifiers."""
    status: JobStatus = JobStatus.ASSIGNED
    turn: int = 0
    """Index in ``candidates`` of the assignee (or of the worker whose result stands)."""
    assigned_ms: int = 0
    timer_ms: int = 0
    """Next time-driven move (turn end, window end, verification end); for a finished job
    the time its record expires from the state."""
    failures: int = 0
    escrow: int = 0
    """Held for the job now: the price until paid or refunded, then 0."""
    bond: int = 0
    """The submitter's dispute bond, held until the dispute is resolved."""
    output: str = ""
    output_sha256: bytes = b""
    completed_ms: int = 0
    verifiers: tuple[bytes, ...] = ()
    votes: tuple[tuple[bytes, bytes], ...] = ()
    """(verifier, output sha256) in posting order; an empty hash is a failure vote."""
    outcome: JobOutcome = JobOutcome.OPEN

    @property
    def assignee(self) -> bytes:
        return self.candidates[self.turn]

    @property
    def worker_pay(self) -> int:
        return self.price - self.owner_pay - self.teacher_pay - self.fee

    @property
    def held(self) -> int:
        return self.escrow + self.bond

    def to_plain(self, job_id: bytes) -> list[Any]:
        return [job_id, self.submitter, self.model, self.job_kind.value, self.input,
                dict(self.params), amount_to_bytes(self.price), self.owner,
                amount_to_bytes(self.owner_pay), self.teacher_owner,
                amount_to_bytes(self.teacher_pay), amount_to_bytes(self.fee),
                self.submitted_ms, self.deadline_ms, list(self.candidates), self.status.value,
                self.turn, self.assigned_ms, self.timer_ms, self.failures,
                amount_to_bytes(self.escrow), amount_to_bytes(self.bond), self.output,
                self.output_sha256, self.completed_ms, list(self.verifiers),
                [list(vote) for vote in self.votes], self.outcome.value]

    @classmethod
    def from_plain(cls, plain: Any) -> tuple[bytes, Job]:
        (job_id, submitter, model, job_kind, input_cid, params, price, owner, owner_pay,
         teacher_owner, teacher_pay, fee, submitted_ms, deadline_ms, candidates, status, turn,
         assigned_ms, timer_ms, failures, escrow, bond, output, output_sha256, completed_ms,
         verifiers, votes, outcome) = plain
        return bytes(job_id), cls(
            submitter=bytes(submitter), model=str(model), job_kind=JobKind(job_kind),
            input=str(input_cid), params=tuple(sorted(dict(params).items())),
            price=amount_from_bytes(price), owner=bytes(owner),
            owner_pay=amount_from_bytes(owner_pay), teacher_owner=bytes(teacher_owner),
            teacher_pay=amount_from_bytes(teacher_pay), fee=amount_from_bytes(fee),
            submitted_ms=submitted_ms, deadline_ms=deadline_ms,
            candidates=tuple(bytes(c) for c in candidates), status=JobStatus(status),
            turn=turn, assigned_ms=assigned_ms, timer_ms=timer_ms, failures=failures,
            escrow=amount_from_bytes(escrow), bond=amount_from_bytes(bond), output=str(output),
            output_sha256=bytes(output_sha256), completed_ms=completed_ms,
            verifiers=tuple(bytes(v) for v in verifiers),
            votes=tuple((bytes(v), bytes(h)) for v, h in votes), outcome=JobOutcome(outcome))


MARKET_DOMAIN = b"prsm/market/1"


def market_root_of(models_root: bytes, workers_root: bytes, jobs_root: bytes) -> bytes:
    """The job market's part of the state root (``ledger.state_root_of``)."""
    return sha256(MARKET_DOMAIN + models_root + workers_root + jobs_root)


def model_leaf(cid: str, model: Model) -> bytes:
    return canonical(model.to_plain(cid))


def worker_leaf(key: bytes, worker: Worker) -> bytes:
    return canonical(worker.to_plain(key))


def job_leaf(job_id: bytes, job: Job) -> bytes:
    return canonical(job.to_plain(job_id))


def rank_workers(job_id: bytes, workers: list[bytes] | tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Eligible workers in assignment order: ascending ``sha256(job_id || key)``."""
    return tuple(sorted(workers, key=lambda key: (sha256(job_id + key), key)))


def split_price(price: int, model: Model, teacher_owner: bytes | None, job_fee_bps: int
                ) -> tuple[int, int, int]:
    """(owner_pay, teacher_pay, fee) of ``price``; the worker gets what is left."""
    royalty = price * model.royalty_bps // BPS_MAX
    teacher_pay = royalty * model.teacher_share_bps // BPS_MAX if teacher_owner else 0
    fee = price * job_fee_bps // BPS_MAX
    assert royalty + fee <= price, "model_register keeps royalty_bps + job_fee_bps <= 100 %"
    return royalty - teacher_pay, teacher_pay, fee


def dispute_bond(price: int, dispute_bond_bps: int) -> int:
    """The bond a dispute of a job with ``price`` must carry (``params.dispute_bond_bps``)."""
    return price * dispute_bond_bps // BPS_MAX
