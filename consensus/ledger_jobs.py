"""The job market half of the ledger state machine: models, workers, jobs, escrow, disputes.

Rules (on top of ``consensus/ledger.py``'s, which all hold here: integers only, no clock
but the block's ``timestamp_ms``, sorted iteration, immutable successors):
1. ``model_register``: the sender owns the model CID (first come); only the owner may
   re-register it to change its terms, which bind jobs submitted afterwards only.
   ``royalty_bps + params.job_fee_bps <= 10,000`` so a worker's pay is never negative.
2. ``worker_register``: ``amount`` is added to the sender's worker stake (separate from
   validator stake) and ``models`` replaces the list it serves; the stake must reach
   ``params.worker_stake_min``. ``worker_unregister`` moves ``amount`` of it to the
   account's unbonding queue (the same ``unbonding_period_blocks`` as ``unstake``); at zero
   the registration ends. Refused while a posted result of the worker is unsettled, so a
   stake cannot escape a slash.
3. ``job_submit``: the job id is the transaction hash. The model's price (at most
   ``amount``, the submitter's maximum) moves into the job's escrow; nothing above it is
   taken. Candidates are the workers serving the model with ``stake >=
   worker_stake_min``, the submitter excluded, ranked by ``rank_workers`` and cut to
   ``job_candidates_max``; with none the submission is refused (``no_worker``).
4. Turns: candidate 0 is assigned at once. A turn lasts ``job_assign_timeout_ms`` of block
   time (never past the deadline). A failure result or the turn's end passes the job to
   the next candidate still eligible (stake and model, checked when its turn comes). With
   none left the escrow is refunded, status ``failed`` if some worker reported a failure,
   else ``refunded``; at the deadline it is refunded (``refunded``, ``deadline_passed``).
5. A result (``ok``, from the assignee) completes the job and opens the challenge window
   (``challenge_window_ms``). ``job_accept`` by the submitter, or the window's end, settles:
   the escrow pays the worker ``price - royalty - fee``, the model owner the royalty less
   the teacher's share, the teacher model's owner ``teacher_share_bps`` of the royalty,
   and ``fee`` joins the block's fees for the validators.
6. ``job_dispute`` (submitter, inside the window, ``amount`` = bond = ``price *
   dispute_bond_bps / 10,000``): the next two eligible candidates after the worker become
   verifiers and post ``job_result`` within ``job_assign_timeout_ms``. Ballots are the
   worker's hash and the verifiers' ok hashes; a hash with two ballots is the majority.
   Every ballot against it is slashed ``slash_bps`` of that worker's stake, and the slashes
   are shared by the verifiers who voted with the majority (no unit is burned).
   Worker in the majority: the job settles as in 5 and the bond also goes to those
   verifiers (a wrong dispute pays for its verification). Worker outvoted: the submitter
   gets the escrow and the bond back. No majority (silence, failures, three hashes): the
   result stands, the job settles as in 5, and the bond goes back to the submitter.
7. Timers: every open job has one ``timer_ms`` (turn end, window end or verification end)
   in a sorted queue; at the start of each block, after unbonding releases and before its
   transactions, the due ones move in (time, job id) order, at most
   ``job_timers_per_block_max`` a block (the rest stay due: ``next_timer_ms`` is then in
   the past and the next block continues). A finished job stays queryable for
   ``job_retention_ms``, then leaves the state (that expiry is housekeeping, not a timer
   anyone waits for, so it rides on blocks that happen anyway).
8. Supply: worker stakes and job escrows and bonds count in the total supply; every move
   between them and balances goes through ``_put_worker``, ``_put_job`` and
   ``_add_balance``, which keep the block's running ``_delta`` (asserted 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from consensus.job_args import BPS_MAX
from consensus.job_checks import VERIFIERS
from consensus.job_records import (
    TERMINAL,
    TRANSITIONS,
    Job,
    JobEvent,
    JobOutcome,
    JobStatus,
    Model,
    Worker,
    job_leaf,
    market_root_of,
    model_leaf,
    rank_workers,
    split_price,
    worker_leaf,
)
from consensus.tables import MerkleTable, TimerQueue
from consensus.tx import SignedTx, TxKind

if TYPE_CHECKING:
    from consensus.ledger import LedgerState

JOB_KINDS = frozenset({TxKind.MODEL_REGISTER, TxKind.WORKER_REGISTER, TxKind.WORKER_UNREGISTER,
                       TxKind.JOB_SUBMIT, TxKind.JOB_RESULT, TxKind.JOB_ACCEPT,
                       TxKind.JOB_DISPUTE})


class LedgerJobs:
    """Mixin of ``LedgerState`` (which owns the slots); see the module rules."""

    __slots__ = ()

    # -- state plumbing --------------------------------------------------------------------

    def _init_market(self: LedgerState) -> None:
        self.models = MerkleTable(model_leaf)
        self.workers = MerkleTable(worker_leaf)
        self.jobs = MerkleTable(job_leaf)
        self._rebuild_market_indexes()

    def _rebuild_market_indexes(self: LedgerState) -> None:
        index: dict[str, list[bytes]] = {}
        for key, worker in self.workers.items():
            for cid in worker.models:
                index.setdefault(cid, []).append(key)
        self._model_workers = {cid: tuple(keys) for cid, keys in index.items()}
        open_jobs = [(j.timer_ms, i) for i, j in self.jobs.items() if j.status not in TERMINAL]
        done_jobs = [(j.timer_ms, i) for i, j in self.jobs.items() if j.status in TERMINAL]
        self._timers, self._expiries = TimerQueue(open_jobs), TimerQueue(done_jobs)

    def _market_successor(self: LedgerState, new: LedgerState) -> None:
        new.models, new.workers = self.models.successor(), self.workers.successor()
        new.jobs = self.jobs.successor()
        new._timers, new._expiries = self._timers.successor(), self._expiries.successor()

    def market_root(self: LedgerState) -> bytes:
        return market_root_of(self.models.root(), self.workers.root(), self.jobs.root())

    def market_holdings(self: LedgerState) -> int:
        """Worker stakes plus job escrows and bonds (O(workers + jobs): audits only)."""
        return (sum(w.stake for _, w in self.workers.items())
                + sum(j.held for _, j in self.jobs.items()))

    def market_snapshot(self: LedgerState) -> dict[str, list[Any]]:
        """The models, workers and jobs tables as plain lists (part of ``snapshot()``)."""
        return {"models": [m.to_plain(cid) for cid, m in self.models.items()],
                "workers": [w.to_plain(key) for key, w in self.workers.items()],
                "jobs": [j.to_plain(job_id) for job_id, j in self.jobs.items()]}

    def market_from_snapshot(self: LedgerState, plain: dict[str, Any]) -> None:
        """Load the tables of ``market_snapshot``; malformed rows raise KeyError, TypeError
        or ValueError (the caller's root check catches anything that parses but lies)."""
        self.models = MerkleTable(model_leaf, dict(Model.from_plain(m) for m in plain["models"]))
        self.workers = MerkleTable(worker_leaf,
                                   dict(Worker.from_plain(w) for w in plain["workers"]))
        self.jobs = MerkleTable(job_leaf, dict(Job.from_plain(j) for j in plain["jobs"]))
        self._rebuild_market_indexes()

    def _put_worker(self: LedgerState, key: bytes, worker: Worker | None) -> None:
        old = self.workers.get(key)
        before = set(old.models) if old else set()
        after = set(worker.models) if worker else set()
        self._delta += (worker.stake if worker else 0) - (old.stake if old else 0)
        if before != after:
            index = dict(self._model_workers)  # replaced, never mutated: states share it
            for cid in sorted(before - after):
                index[cid] = tuple(k for k in index[cid] if k != key)
                if not index[cid]:
                    del index[cid]
            for cid in sorted(after - before):
                index[cid] = tuple(sorted((*index.get(cid, ()), key)))
            self._model_workers = index
        if worker is None:
            self.workers.delete(key)
        else:
            self.workers.put(key, worker)

    def _put_job(self: LedgerState, job_id: bytes, job: Job | None) -> None:
        old = self.jobs.get(job_id)
        if old is not None:
            queue = self._expiries if old.status in TERMINAL else self._timers
            queue.remove(old.timer_ms, job_id)
            self._delta -= old.held
        if job is None:
            self.jobs.delete(job_id)
            return
        (self._expiries if job.status in TERMINAL else self._timers).add(job.timer_ms, job_id)
        self._delta += job.held
        self.jobs.put(job_id, job)

    def _move(self: LedgerState, job_id: bytes, job: Job, event: JobEvent, **changes: object
              ) -> Job:
        """Write ``job`` with ``changes``; the status move must be in ``TRANSITIONS``."""
        new = replace(job, **changes)  # type: ignore[arg-type]
        assert new.status in TRANSITIONS[(job.status, event)], (job.status, event, new.status)
        self._put_job(job_id, new)
        return new

    def _eligible(self: LedgerState, key: bytes, cid: str) -> bool:
        worker = self.workers.get(key)
        return (worker is not None and worker.stake >= self.params.worker_stake_min
                and cid in worker.models)

    def _open_jobs(self: LedgerState, key: bytes, step: int) -> None:
        worker = self.workers.get(key)
        assert worker is not None and worker.open_jobs + step >= 0
        self._put_worker(key, replace(worker, open_jobs=worker.open_jobs + step))

    def _verifiers_for(self: LedgerState, job: Job) -> tuple[bytes, ...]:
        later = job.candidates[job.turn + 1:]
        return tuple(k for k in later if self._eligible(k, job.model))[:VERIFIERS]

    # -- applying --------------------------------------------------------------------------

    def _apply_job_tx(self: LedgerState, tx: SignedTx) -> int:
        """Apply a checked job transaction (fee and nonce already charged); returns the
        job fees it releases to the block's validators."""
        return _APPLY[tx.body.kind](self, tx)

    def _apply_model_register(self: LedgerState, tx: SignedTx) -> int:
        args = tx.body.args
        self.models.put(args.model, Model(owner=tx.body.sender, royalty_bps=args.royalty_bps,
                                          price=args.price, teacher=args.teacher,
                                          teacher_share_bps=args.teacher_share_bps))
        return 0

    def _apply_worker_register(self: LedgerState, tx: SignedTx) -> int:
        body = tx.body
        old = self.workers.get(body.sender) or Worker(stake=0, models=())
        self._add_balance(body.sender, -body.amount)
        self._put_worker(body.sender, replace(old, stake=old.stake + body.amount,
                                              models=body.args.models))
        return 0

    def _apply_worker_unregister(self: LedgerState, tx: SignedTx) -> int:
        body = tx.body
        worker = self.workers.get(body.sender)
        assert worker is not None and worker.open_jobs == 0
        self._unbond(body.sender, body.amount)
        stake = worker.stake - body.amount
        self._put_worker(body.sender, replace(worker, stake=stake) if stake else None)
        return 0

    def _apply_job_submit(self: LedgerState, tx: SignedTx) -> int:
        body, args, params, now = tx.body, tx.body.args, self.params, self.last_timestamp_ms
        model = self.models.get(args.model)
        assert model is not None
        eligible = [k for k in self._model_workers.get(args.model, ())
                    if k != body.sender and self._eligible(k, args.model)]
        candidates = rank_workers(tx.tx_hash, eligible)[:params.job_candidates_max]
        teacher = self.models.get(model.teacher) if model.teacher else None
        teacher_owner = teacher.owner if teacher else b""
        owner_pay, teacher_pay, fee = split_price(model.price, model, teacher_owner,
                                                  params.job_fee_bps)
        self._add_balance(body.sender, -model.price)
        self._put_job(tx.tx_hash, Job(
            submitter=body.sender, model=args.model, job_kind=args.job_kind, input=args.input,
            params=args.params, price=model.price, owner=model.owner, owner_pay=owner_pay,
            teacher_owner=teacher_owner, teacher_pay=teacher_pay, fee=fee, submitted_ms=now,
            deadline_ms=args.deadline_ms, candidates=candidates, assigned_ms=now,
            timer_ms=min(now + params.job_assign_timeout_ms, args.deadline_ms),
            escrow=model.price))
        return 0

    def _apply_job_result(self: LedgerState, tx: SignedTx) -> int:
        args, sender, now = tx.body.args, tx.body.sender, self.last_timestamp_ms
        job = self.jobs.get(args.job)
        assert job is not None
        if job.status is JobStatus.DISPUTED:
            if args.ok:
                self._open_jobs(sender, 1)
            job = self._move(args.job, job, JobEvent.VOTE,
                             votes=(*job.votes, (sender, args.output_sha256)))
            return self._resolve(args.job, job, JobEvent.VOTE) \
                if len(job.votes) == len(job.verifiers) else 0
        if not args.ok:
            return self._pass_on(args.job, replace(job, failures=job.failures + 1),
                                 JobEvent.RESULT_FAILED)
        self._open_jobs(sender, 1)
        self._move(args.job, job, JobEvent.RESULT_OK, status=JobStatus.COMPLETED,
                   output=args.output, output_sha256=args.output_sha256, completed_ms=now,
                   timer_ms=now + self.params.challenge_window_ms)
        return 0

    def _apply_job_accept(self: LedgerState, tx: SignedTx) -> int:
        job = self.jobs.get(tx.body.args.job)
        assert job is not None
        return self._settle(tx.body.args.job, job, JobEvent.ACCEPT, JobOutcome.ACCEPTED)

    def _apply_job_dispute(self: LedgerState, tx: SignedTx) -> int:
        body, job_id = tx.body, tx.body.args.job
        job = self.jobs.get(job_id)
        assert job is not None
        self._add_balance(body.sender, -body.amount)
        self._move(job_id, job, JobEvent.DISPUTE, status=JobStatus.DISPUTED, bond=body.amount,
                   verifiers=self._verifiers_for(job),
                   timer_ms=self.last_timestamp_ms + self.params.job_assign_timeout_ms)
        return 0

    # -- moves shared by transactions and timers -------------------------------------------

    def _run_job_timers(self: LedgerState) -> int:
        """Due timers at the block's time (rule 7); returns the job fees released."""
        now, limit, fees = self.last_timestamp_ms, self.params.job_timers_per_block_max, 0
        for _, job_id in self._timers.due(now, limit):
            job = self.jobs.get(job_id)
            assert job is not None
            if job.status is JobStatus.ASSIGNED:
                fees += self._pass_on(job_id, job, JobEvent.TURN_TIMEOUT)
            elif job.status is JobStatus.COMPLETED:
                fees += self._settle(job_id, job, JobEvent.WINDOW_PASSED,
                                     JobOutcome.WINDOW_PASSED)
            else:
                fees += self._resolve(job_id, job, JobEvent.VOTE_TIMEOUT)
        for _, job_id in self._expiries.due(now, limit):
            self._put_job(job_id, None)
        return fees

    def _pass_on(self: LedgerState, job_id: bytes, job: Job, event: JobEvent) -> int:
        """The next eligible candidate takes the job, or the escrow goes back (rule 4)."""
        now, params = self.last_timestamp_ms, self.params
        if now < job.deadline_ms:
            for turn in range(job.turn + 1, len(job.candidates)):
                if self._eligible(job.candidates[turn], job.model):
                    self._move(job_id, job, event, turn=turn, assigned_ms=now,
                               timer_ms=min(now + params.job_assign_timeout_ms,
                                            job.deadline_ms))
                    return 0
            status = JobStatus.FAILED if job.failures else JobStatus.REFUNDED
            self._refund(job_id, job, event, status, JobOutcome.NO_WORKER_LEFT)
        else:
            self._refund(job_id, job, event, JobStatus.REFUNDED, JobOutcome.DEADLINE)
        return 0

    def _finish(self: LedgerState, job_id: bytes, job: Job, event: JobEvent,
                status: JobStatus, outcome: JobOutcome) -> None:
        """Close ``job`` once its escrow and bond have been paid out."""
        self._move(job_id, job, event, status=status, outcome=outcome, escrow=0, bond=0,
                   timer_ms=self.last_timestamp_ms + self.params.job_retention_ms)

    def _refund(self: LedgerState, job_id: bytes, job: Job, event: JobEvent,
                status: JobStatus, outcome: JobOutcome) -> None:
        self._add_balance(job.submitter, job.held)
        self._finish(job_id, job, event, status, outcome)

    def _settle(self: LedgerState, job_id: bytes, job: Job, event: JobEvent,
                outcome: JobOutcome) -> int:
        """Pay the escrow out (rule 5); the bond must be paid out already."""
        assert job.escrow == job.price
        self._add_balance(job.assignee, job.worker_pay)
        self._add_balance(job.owner, job.owner_pay)
        if job.teacher_pay:
            self._add_balance(job.teacher_owner, job.teacher_pay)
        self._open_jobs(job.assignee, -1)
        self._finish(job_id, job, event, JobStatus.ACCEPTED, outcome)
        return job.fee

    def _resolve(self: LedgerState, job_id: bytes, job: Job, event: JobEvent) -> int:
        """Count the ballots of a disputed job and pay out (rule 6)."""
        ballots = [(job.assignee, job.output_sha256)]
        ballots += [(voter, digest) for voter, digest in job.votes if digest]
        for voter, _ in ballots[1:]:
            self._open_jobs(voter, -1)
        digests = [digest for _, digest in ballots]
        majority = next((d for d in digests if digests.count(d) >= 2), None)
        if majority is None:
            self._add_balance(job.submitter, job.bond)
            return self._settle(job_id, replace(job, bond=0), event,
                                JobOutcome.DISPUTE_UNDECIDED)
        pool = sum(self._slash(voter) for voter, digest in ballots if digest != majority)
        voted = dict(job.votes)
        winners = [k for k in job.verifiers if voted.get(k) == majority]
        if majority == job.output_sha256:
            self._share(pool + job.bond, winners)
            return self._settle(job_id, replace(job, bond=0), event,
                                JobOutcome.DISPUTE_REJECTED)
        self._share(pool, winners)
        self._open_jobs(job.assignee, -1)
        self._refund(job_id, job, event, JobStatus.REFUNDED, JobOutcome.DISPUTE_UPHELD)
        return 0

    def _slash(self: LedgerState, key: bytes) -> int:
        worker = self.workers.get(key)
        assert worker is not None
        amount = worker.stake * self.params.slash_bps // BPS_MAX
        self._put_worker(key, replace(worker, stake=worker.stake - amount))
        return amount

    def _share(self: LedgerState, amount: int, winners: list[bytes]) -> None:
        """Split ``amount`` equally; the first winner (by rank) gets the remainder."""
        assert winners
        share, remainder = divmod(amount, len(winners))
        for index, key in enumerate(winners):
            self._add_balance(key, share + (remainder if index == 0 else 0))


_APPLY: dict[TxKind, Callable[[LedgerState, SignedTx], int]] = {
    TxKind.MODEL_REGISTER: LedgerJobs._apply_model_register,
    TxKind.WORKER_REGISTER: LedgerJobs._apply_worker_register,
    TxKind.WORKER_UNREGISTER: LedgerJobs._apply_worker_unregister,
    TxKind.JOB_SUBMIT: LedgerJobs._apply_job_submit,
    TxKind.JOB_RESULT: LedgerJobs._apply_job_result,
    TxKind.JOB_ACCEPT: LedgerJobs._apply_job_accept,
    TxKind.JOB_DISPUTE: LedgerJobs._apply_job_dispute,
}
