"""Stateful checks of the job-market transactions (the rules are ``ledger_jobs.py``'s).

Rules:
1. A check changes nothing: it reads one ``LedgerState`` and raises ``TxRejected`` with a
   reason code and a message that says what to do; ``LedgerJobs`` applies only what passed.
2. Each kind's check returns what the transaction takes from the balance beyond its fee
   (stake, escrow, bond), so the balance is checked once, after the kind's own checks.
3. Time is the state's ``last_timestamp_ms``: the block's timestamp while a block executes
   (its due timers have moved already), the last block's in the mempool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from consensus.errors import TxRejected
from consensus.job_args import BPS_MAX
from consensus.job_records import Job, JobEvent, JobStatus, dispute_bond, require_move
from consensus.tx import SignedTx, TxBody, TxKind

if TYPE_CHECKING:
    from consensus.ledger import Account, LedgerState

VERIFIERS = 2
"""Verifiers per dispute: with the worker, three ballots, so two agreeing is a majority."""


class JobChecks:
    """Mixin of ``LedgerState``: ``_check_job_tx`` and one check per job kind."""

    __slots__ = ()

    def _check_job_tx(self: LedgerState, tx: SignedTx, account: Account) -> None:
        """Stateful checks of a job kind (after chain, nonce and fee); changes nothing."""
        body = tx.body
        spend = body.fee + _CHECKS[body.kind](self, body)
        if account.balance < spend:
            raise TxRejected("insufficient_balance", f"needs {spend} base units (fee + what "
                             f"{body.kind.value} moves), the balance is {account.balance}")

    def _check_model_register(self: LedgerState, body: TxBody) -> int:
        args, params = body.args, self.params
        _no_amount(body)
        model = self.models.get(args.model)
        if model is not None and model.owner != body.sender:
            raise TxRejected("not_owner", f"model {args.model} is registered by another account")
        if model is None and len(self.models) >= params.models_max:
            raise TxRejected("ledger_full", f"the ledger holds params.models_max "
                             f"({params.models_max}) models")
        if args.royalty_bps + params.job_fee_bps > BPS_MAX:
            raise TxRejected("bad_args", f"royalty_bps may be at most "
                             f"{BPS_MAX - params.job_fee_bps} (the job fee takes "
                             f"{params.job_fee_bps} bps)")
        if args.teacher and args.teacher not in self.models:
            raise TxRejected("unknown_model", f"teacher model {args.teacher} is not registered")
        return 0

    def _check_worker_register(self: LedgerState, body: TxBody) -> int:
        args, params = body.args, self.params
        for cid in args.models:
            if cid not in self.models:
                raise TxRejected("unknown_model", f"model {cid} is not registered")
        worker = self.workers.get(body.sender)
        if worker is None and len(self.workers) >= params.workers_max:
            raise TxRejected("ledger_full", f"the ledger holds params.workers_max "
                             f"({params.workers_max}) workers")
        for cid in args.models:
            if ((worker is None or cid not in worker.models)
                    and len(self._model_workers.get(cid, ())) >= params.model_workers_max):
                raise TxRejected("ledger_full", f"model {cid} already has params."
                                 f"model_workers_max ({params.model_workers_max}) workers")
        stake = (worker.stake if worker else 0) + body.amount
        if stake < params.worker_stake_min:
            raise TxRejected("insufficient_stake", f"a worker needs {params.worker_stake_min} "
                             f"staked; this would make {stake}")
        return body.amount

    def _check_worker_unregister(self: LedgerState, body: TxBody) -> int:
        worker = self.workers.get(body.sender)
        if worker is None:
            raise TxRejected("not_worker", "this account is not a registered worker")
        if body.amount == 0:
            raise TxRejected("bad_amount", "worker_unregister needs the stake to withdraw (> 0)")
        if body.amount > worker.stake:
            raise TxRejected("insufficient_stake", f"withdrawing {body.amount} but the worker "
                             f"stake is {worker.stake}")
        if worker.open_jobs:
            raise TxRejected("worker_busy", f"{worker.open_jobs} posted results are not settled "
                             "yet; the stake stays until they are")
        if len(self.account(body.sender).unbonding) >= self.params.unbonding_entries_max:
            raise TxRejected("unbonding_full", f"{self.params.unbonding_entries_max} unbondings "
                             "are already pending; wait for one to mature")
        return 0

    def _check_job_submit(self: LedgerState, body: TxBody) -> int:
        args, params, now = body.args, self.params, self.last_timestamp_ms
        model = self.models.get(args.model)
        if model is None:
            raise TxRejected("unknown_model", f"model {args.model} is not registered")
        if body.amount < model.price:
            raise TxRejected("price_above_max", f"model {args.model} costs {model.price} per "
                             f"job, above the maximum {body.amount} in amount")
        if not now < args.deadline_ms <= now + params.job_deadline_max_ms:
            raise TxRejected("bad_args", f"deadline_ms must be after the last block time {now} "
                             f"and at most params.job_deadline_max_ms "
                             f"({params.job_deadline_max_ms}) after it")
        if len(self.jobs) >= params.jobs_max:
            raise TxRejected("ledger_full", f"the ledger holds params.jobs_max ({params.jobs_max})"
                             " jobs; retry when finished jobs expire")
        if not any(k != body.sender and self._eligible(k, args.model)
                   for k in self._model_workers.get(args.model, ())):
            raise TxRejected("no_worker", f"no worker with at least {params.worker_stake_min} "
                             f"staked serves model {args.model}")
        return model.price

    def _job_of(self: LedgerState, job_id: bytes) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise TxRejected("unknown_job", f"no job {job_id.hex()} in the ledger (never "
                             "submitted, or finished more than params.job_retention_ms ago)")
        return job

    def _check_job_result(self: LedgerState, body: TxBody) -> int:
        args, sender = body.args, body.sender
        job = self._job_of(args.job)
        _no_amount(body)
        if job.status is JobStatus.DISPUTED:
            if sender not in job.verifiers:
                raise TxRejected("not_assignee", "this job is disputed; only its verifiers post")
            if any(voter == sender for voter, _ in job.votes):
                raise TxRejected("job_state", "this verifier already posted its result")
        else:
            require_move(job.status, JobEvent.RESULT_OK if args.ok else JobEvent.RESULT_FAILED)
            if sender != job.assignee:
                raise TxRejected("not_assignee", "the job is assigned to another worker")
        if self.last_timestamp_ms >= job.timer_ms:
            raise TxRejected("window_closed", f"the turn ended at {job.timer_ms} (block time)")
        worker = self.workers.get(sender)
        if args.ok and (worker is None or worker.stake < self.params.worker_stake_min):
            raise TxRejected("insufficient_stake", "a result needs the worker stake at "
                             f"params.worker_stake_min ({self.params.worker_stake_min})")
        return 0

    def _check_job_accept(self: LedgerState, body: TxBody) -> int:
        job = self._job_of(body.args.job)
        _no_amount(body)
        _submitter_only(job, body)
        require_move(job.status, JobEvent.ACCEPT)
        return 0

    def _check_job_dispute(self: LedgerState, body: TxBody) -> int:
        job = self._job_of(body.args.job)
        _submitter_only(job, body)
        require_move(job.status, JobEvent.DISPUTE)
        if self.last_timestamp_ms >= job.timer_ms:
            raise TxRejected("window_closed", f"the challenge window closed at {job.timer_ms}")
        if len(self._verifiers_for(job)) < VERIFIERS:
            raise TxRejected("no_verifiers", f"fewer than {VERIFIERS} eligible workers are left "
                             "among the job's candidates to verify it")
        bond = dispute_bond(job.price, self.params.dispute_bond_bps)
        if body.amount != bond:
            raise TxRejected("bad_amount", f"a dispute of this job bonds exactly {bond} (amount)")
        return bond


def _no_amount(body: TxBody) -> None:
    if body.amount:
        raise TxRejected("bad_amount", f"{body.kind.value} moves no amount; set amount 0")


def _submitter_only(job: Job, body: TxBody) -> None:
    if body.sender != job.submitter:
        raise TxRejected("not_submitter", f"only the job's submitter may send {body.kind.value}")


_CHECKS: dict[TxKind, Callable[[LedgerState, TxBody], int]] = {
    TxKind.MODEL_REGISTER: JobChecks._check_model_register,
    TxKind.WORKER_REGISTER: JobChecks._check_worker_register,
    TxKind.WORKER_UNREGISTER: JobChecks._check_worker_unregister,
    TxKind.JOB_SUBMIT: JobChecks._check_job_submit,
    TxKind.JOB_RESULT: JobChecks._check_job_result,
    TxKind.JOB_ACCEPT: JobChecks._check_job_accept,
    TxKind.JOB_DISPUTE: JobChecks._check_job_dispute,
}
"""Each job kind's check; returns what it takes from the balance beyond the fee."""
