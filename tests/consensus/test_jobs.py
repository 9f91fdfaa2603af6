"""The job market on the ledger: models, workers, job turns, settlement, disputes, timers."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.errors import GenesisError
from consensus.genesis import Params
from consensus.job_args import JobKind
from consensus.job_records import JobOutcome, JobStatus, rank_workers
from consensus.job_tx import (
    dispute_bond,
    job_accept,
    job_dispute,
    job_failure,
    job_result,
    job_submit,
    model_register,
    worker_register,
    worker_unregister,
)
from consensus.ledger import LedgerState, verify_account_proof, verify_job_proof
from consensus.tx import TxBody, TxKind
from tests.consensus.helpers import FEE
from tests.consensus.market import (
    HASH_A,
    HASH_B,
    INPUT,
    MODEL,
    OUTPUT_B,
    OWNER,
    PRICE,
    RETENTION_MS,
    STAKE,
    STRANGER,
    SUBMITTER,
    TEACHER_MODEL,
    TEACHER_OWNER,
    TIMEOUT_MS,
    VALIDATORS,
    WINDOW_MS,
    WORKERS,
    Market,
    ready_market,
    signer_of,
)

ROYALTY = PRICE // 10  # 1,000 bps
JOB_FEE = PRICE // 100  # 100 bps
WORKER_PAY = PRICE - ROYALTY - JOB_FEE


def validators_balance(state: LedgerState) -> int:
    return sum(state.account(v.public_key).balance for v in VALIDATORS)


# -- models ------------------------------------------------------------------------------------

def test_model_register_records_owner_and_terms_and_owner_may_reprice() -> None:
    market = Market()
    market.register_model(royalty_bps=500, price=3 * PRICE)
    model = market.state.model(MODEL)
    assert model is not None and model.owner == OWNER.public_key
    assert (model.royalty_bps, model.price, model.teacher) == (500, 3 * PRICE, "")
    market.register_model(royalty_bps=700, price=PRICE)
    assert market.state.model(MODEL).price == PRICE
    assert market.rejection(STRANGER, lambda h: model_register(
        h, model=MODEL, royalty_bps=0, price=1)) == "not_owner"


@pytest.mark.parametrize(("build", "code"), [
    (lambda h: model_register(h, model="bafkx", royalty_bps=9_950, price=1), "bad_args"),
    (lambda h: model_register(h, model="bafkx", royalty_bps=0, price=1, teacher="bafknone",
                              teacher_share_bps=1), "unknown_model"),
    (lambda h: dataclasses.replace(model_register(h, model="bafkx", royalty_bps=0, price=1),
                                   amount=1), "bad_amount"),
])
def test_model_register_rejections(build, code: str) -> None:
    assert Market().rejection(OWNER, build) == code


def test_models_max_bounds_the_model_table() -> None:
    market = Market(models_max=1)
    market.register_model()
    assert market.rejection(STRANGER, lambda h: model_register(
        h, model="bafkother", royalty_bps=0, price=1)) == "ledger_full"


# -- workers -----------------------------------------------------------------------------------

def test_worker_register_bonds_stake_and_serves_models() -> None:
    market = Market()
    market.register_model()
    before = market.balance(WORKERS[0])
    market.run(WORKERS[0], lambda h: worker_register(h, models=[MODEL], stake=STAKE))
    worker = market.state.worker(WORKERS[0].public_key)
    assert worker is not None and (worker.stake, worker.models) == (STAKE, (MODEL,))
    assert market.balance(WORKERS[0]) == before - STAKE - FEE
    assert market.state.workers_for_model(MODEL) == (WORKERS[0].public_key,)
    assert market.state.eligible_workers(MODEL) == (WORKERS[0].public_key,)
    market.run(OWNER, lambda h: model_register(h, model="bafkother", royalty_bps=0, price=1))
    market.run(WORKERS[0], lambda h: worker_register(h, models=["bafkother"]))  # stake stays
    assert market.state.workers_for_model(MODEL) == ()
    assert market.state.worker(WORKERS[0].public_key).stake == STAKE


@pytest.mark.parametrize(("build", "code"), [
    (lambda h: worker_register(h, models=["bafknone"], stake=STAKE), "unknown_model"),
    (lambda h: worker_register(h, models=[MODEL], stake=STAKE - 1), "insufficient_stake"),
    (lambda h: worker_register(h, models=[MODEL], stake=1000 * STAKE), "insufficient_balance"),
])
def test_worker_register_rejections(build, code: str) -> None:
    market = Market()
    market.register_model()
    assert market.rejection(WORKERS[0], build) == code


def test_model_workers_max_bounds_workers_per_model() -> None:
    market = ready_market(workers=1, model_workers_max=1)
    assert market.rejection(WORKERS[1], lambda h: worker_register(
        h, models=[MODEL], stake=STAKE)) == "ledger_full"


def test_worker_unregister_unbonds_stake_and_releases_it_after_the_period() -> None:
    market = ready_market(workers=1)
    worker = WORKERS[0]
    market.run(worker, lambda h: worker_unregister(h, amount=STAKE))
    assert market.state.worker(worker.public_key) is None
    assert market.state.workers_for_model(MODEL) == ()
    account = market.state.account(worker.public_key)
    assert account.unbonding == ((market.state.height + 3, STAKE),)  # unbonding 3 blocks
    balance = account.balance
    for _ in range(3):
        market.block()
    assert market.balance(worker) == balance + STAKE


@pytest.mark.parametrize(("who", "amount", "code"), [
    (STRANGER, STAKE, "not_worker"),
    (WORKERS[0], 0, "bad_amount"),
    (WORKERS[0], STAKE + 1, "insufficient_stake"),
])
def test_worker_unregister_rejections(who, amount: int, code: str) -> None:
    market = ready_market(workers=1)
    assert market.rejection(who, lambda h: worker_unregister(h, amount=amount)) == code


# -- submission and assignment -----------------------------------------------------------------

def test_job_submit_escrows_the_model_price_and_assigns_rank_zero() -> None:
    market = ready_market()
    before = market.balance(SUBMITTER)
    job_id = market.submit(max_price=5 * PRICE)  # the model costs PRICE: only that is taken
    job = market.job(job_id)
    assert market.balance(SUBMITTER) == before - PRICE - FEE
    assert (job.status, job.escrow, job.price, job.outcome) == (
        JobStatus.ASSIGNED, PRICE, PRICE, JobOutcome.OPEN)
    expected = rank_workers(job_id, [w.public_key for w in WORKERS])
    assert job.candidates == expected and job.assignee == expected[0]
    assert market.state.assignee_now(job_id) == expected[0]
    assert job.timer_ms == market.now_ms + TIMEOUT_MS
    assert (job.model, job.job_kind, job.input) == (MODEL, JobKind.INFERENCE, INPUT)
    assert market.state.next_timer_ms() == job.timer_ms


def test_submitter_is_never_its_own_worker() -> None:
    market = ready_market(workers=1)
    worker = WORKERS[0]
    assert market.rejection(worker, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.DISTILL, input_cid=INPUT, deadline_ms=9_000,
        max_price=PRICE)) == "no_worker"


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"model": "bafknone"}, "unknown_model"),
    ({"max_price": PRICE - 1}, "price_above_max"),
    ({"deadline_ms": 0}, "bad_args"),
    ({"deadline_ms": 10**9}, "bad_args"),
])
def test_job_submit_rejections(kwargs: dict, code: str) -> None:
    market = ready_market()
    args = {"model": MODEL, "job_kind": JobKind.INFERENCE, "input_cid": INPUT,
            "deadline_ms": 9_000, "max_price": PRICE} | kwargs
    assert market.rejection(SUBMITTER, lambda h: job_submit(h, **args)) == code


def test_job_submit_needs_an_eligible_worker_and_a_balance() -> None:
    market = Market()
    market.register_model(price=1000 * PRICE)
    assert market.rejection(SUBMITTER, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=9_000,
        max_price=1000 * PRICE)) == "no_worker"
    market.register_workers(1)
    assert market.rejection(SUBMITTER, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=9_000,
        max_price=1000 * PRICE)) == "insufficient_balance"
    market.run(WORKERS[0], lambda h: worker_unregister(h, amount=1))  # below the minimum
    assert market.state.eligible_workers(MODEL) == ()
    market.register_model(price=PRICE)
    assert market.rejection(SUBMITTER, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=9_000,
        max_price=PRICE)) == "no_worker"


def test_jobs_max_bounds_the_job_table() -> None:
    market = ready_market(jobs_max=1)
    market.submit()
    assert market.rejection(SUBMITTER, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=9_000,
        max_price=PRICE)) == "ledger_full"


# -- results, acceptance, settlement -----------------------------------------------------------

def test_accept_pays_worker_owner_teacher_and_validators_exactly() -> None:
    market = Market()
    market.run(TEACHER_OWNER, lambda h: model_register(h, model=TEACHER_MODEL, royalty_bps=0,
                                                       price=PRICE))
    market.run(OWNER, lambda h: model_register(h, model=MODEL, royalty_bps=1_000, price=PRICE,
                                               teacher=TEACHER_MODEL, teacher_share_bps=2_500))
    market.register_workers()
    job_id = market.submit()
    worker = signer_of(market.job(job_id).assignee)
    market.post(worker, job_id)
    job = market.job(job_id)
    assert (job.status, job.output_sha256, job.completed_ms) == (
        JobStatus.COMPLETED, HASH_A, market.now_ms)
    assert market.state.worker(worker.public_key).open_jobs == 1
    before = {s: market.balance(s) for s in (worker, OWNER, TEACHER_OWNER, SUBMITTER)}
    validators = validators_balance(market.state)
    market.run(SUBMITTER, lambda h: job_accept(h, job=job_id))
    teacher_pay = ROYALTY // 4
    assert market.balance(worker) == before[worker] + WORKER_PAY
    assert market.balance(OWNER) == before[OWNER] + ROYALTY - teacher_pay
    assert market.balance(TEACHER_OWNER) == before[TEACHER_OWNER] + teacher_pay
    assert market.balance(SUBMITTER) == before[SUBMITTER] - FEE
    assert validators_balance(market.state) == validators + FEE + JOB_FEE
    job = market.job(job_id)
    assert (job.status, job.outcome, job.escrow) == (JobStatus.ACCEPTED, JobOutcome.ACCEPTED, 0)
    assert market.state.worker(worker.public_key).open_jobs == 0


def test_result_settles_by_itself_when_the_challenge_window_passes() -> None:
    market = ready_market()
    job_id = market.submit()
    worker = signer_of(market.job(job_id).assignee)
    market.post(worker, job_id)
    settle_at = market.now_ms + WINDOW_MS
    assert market.state.next_timer_ms() == settle_at
    before = market.balance(worker)
    market.block(at_ms=settle_at - 1)
    assert market.job(job_id).status is JobStatus.COMPLETED
    market.block(at_ms=settle_at)  # an empty block is enough
    job = market.job(job_id)
    assert (job.status, job.outcome) == (JobStatus.ACCEPTED, JobOutcome.WINDOW_PASSED)
    assert market.balance(worker) == before + WORKER_PAY
    assert market.state.next_timer_ms() is None


def test_silent_worker_loses_the_job_to_the_next_rank() -> None:
    market = ready_market()
    job_id = market.submit()
    first, second = market.job(job_id).candidates[:2]
    market.block(at_ms=market.job(job_id).timer_ms)
    job = market.job(job_id)
    assert (job.status, job.assignee, job.turn) == (JobStatus.ASSIGNED, second, 1)
    assert job.timer_ms == market.now_ms + TIMEOUT_MS
    assert market.rejection(signer_of(first), lambda h: job_result(
        h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "not_assignee"
    market.post(signer_of(second), job_id)
    assert market.job(job_id).status is JobStatus.COMPLETED


def test_failure_results_pass_the_job_on_and_the_last_one_fails_it_with_refund() -> None:
    market = ready_market(workers=3)
    before = market.balance(SUBMITTER)
    job_id = market.submit()
    for turn in range(3):
        job = market.job(job_id)
        assert job.turn == turn and job.status is JobStatus.ASSIGNED
        market.run(signer_of(job.assignee), lambda h: job_failure(h, job=job_id))
    job = market.job(job_id)
    assert (job.status, job.outcome, job.failures) == (
        JobStatus.FAILED, JobOutcome.NO_WORKER_LEFT, 3)
    assert market.balance(SUBMITTER) == before - FEE  # the escrow came back


def test_deadline_refunds_the_escrow() -> None:
    market = ready_market()
    before = market.balance(SUBMITTER)
    job_id = market.submit(deadline_ms=market.now_ms + 1 + TIMEOUT_MS // 2)
    deadline = market.job(job_id).deadline_ms
    assert market.job(job_id).timer_ms == deadline  # the turn is cut at the deadline
    market.block(at_ms=deadline)
    job = market.job(job_id)
    assert (job.status, job.outcome, job.escrow) == (JobStatus.REFUNDED, JobOutcome.DEADLINE, 0)
    assert market.balance(SUBMITTER) == before - FEE
    assert market.rejection(signer_of(job.assignee), lambda h: job_result(
        h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "job_state"


def test_result_rejections() -> None:
    market = ready_market()
    job_id = market.submit()
    worker = signer_of(market.job(job_id).assignee)
    other = signer_of(market.job(job_id).candidates[1])

    def result(h):
        return job_result(h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)

    assert market.rejection(worker, lambda h: job_result(
        h, job=b"\x01" * 32, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "unknown_job"
    assert market.rejection(other, result) == "not_assignee"
    assert market.rejection(worker, lambda h: dataclasses.replace(result(h), amount=1)) \
        == "bad_amount"
    market.post(worker, job_id)
    assert market.rejection(worker, result) == "job_state"  # a second result
    assert market.rejection(SUBMITTER, lambda h: job_accept(h, job=b"\x02" * 32)) \
        == "unknown_job"


def test_result_needs_the_worker_stake() -> None:
    market = ready_market()
    job_id = market.submit()
    worker = signer_of(market.job(job_id).assignee)
    market.run(worker, lambda h: worker_unregister(h, amount=1))
    assert market.rejection(worker, lambda h: job_result(
        h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "insufficient_stake"


def test_accept_rejections() -> None:
    market = ready_market()
    job_id = market.submit()
    assert market.rejection(SUBMITTER, lambda h: job_accept(h, job=job_id)) == "job_state"
    market.post(signer_of(market.job(job_id).assignee), job_id)
    assert market.rejection(STRANGER, lambda h: job_accept(h, job=job_id)) == "not_submitter"
    market.run(SUBMITTER, lambda h: job_accept(h, job=job_id))
    assert market.rejection(SUBMITTER, lambda h: job_accept(h, job=job_id)) == "job_state"


def test_worker_cannot_unbond_while_its_result_is_unsettled() -> None:
    market = ready_market()
    job_id = market.submit()
    worker = signer_of(market.job(job_id).assignee)
    market.post(worker, job_id)
    assert market.rejection(worker, lambda h: worker_unregister(h, amount=STAKE)) \
        == "worker_busy"
    market.run(SUBMITTER, lambda h: job_accept(h, job=job_id))
    market.run(worker, lambda h: worker_unregister(h, amount=STAKE))


def test_timers_per_block_are_capped_and_the_rest_move_in_the_next_block() -> None:
    market = ready_market(job_timers_per_block_max=1)
    submits = [market.sign(s, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=50_000,
        max_price=PRICE)) for s in (SUBMITTER, STRANGER)]
    market.block(*submits)  # one block: the same timer for both
    first, second = sorted(tx.tx_hash for tx in submits)  # timers move in (time, id) order
    due = market.job(first).timer_ms
    assert market.job(second).timer_ms == due
    market.block(at_ms=due)
    assert market.job(first).turn == 1 and market.job(second).turn == 0  # one moved
    assert market.state.next_timer_ms() == due  # the other is due already
    assignee = signer_of(market.job(second).assignee)
    assert market.rejection(assignee, lambda h: job_result(
        h, job=second, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "window_closed"
    market.block()
    assert market.job(second).turn == 1


# -- disputes ----------------------------------------------------------------------------------

def disputed(market: Market) -> tuple[bytes, list]:
    """A job whose worker posted HASH_A and whose submitter disputes it."""
    job_id = market.submit()
    candidates = [signer_of(k) for k in market.job(job_id).candidates]
    market.post(candidates[0], job_id)
    bond = dispute_bond(PRICE, market.genesis.params.dispute_bond_bps)
    market.run(SUBMITTER, lambda h: job_dispute(h, job=job_id, bond=bond))
    job = market.job(job_id)
    assert job.status is JobStatus.DISPUTED and job.bond == bond
    assert job.verifiers == tuple(c.public_key for c in candidates[1:3])
    assert market.state.next_timer_ms() == market.now_ms + TIMEOUT_MS
    return job_id, candidates


def stakes(market: Market, signers: list) -> list[int]:
    return [market.state.worker(s.public_key).stake for s in signers]


def test_dispute_upheld_slashes_the_worker_and_refunds_the_submitter() -> None:
    market = ready_market()
    before = market.balance(SUBMITTER)
    job_id, (worker, first, second, *_) = disputed(market)
    assert [w for w, _ in market.state.work_for(first.public_key)] == [job_id]
    balances = [market.balance(s) for s in (first, second)]
    market.post(first, job_id, OUTPUT_B, HASH_B)
    market.post(second, job_id, OUTPUT_B, HASH_B)
    job = market.job(job_id)
    assert (job.status, job.outcome, job.held) == (
        JobStatus.REFUNDED, JobOutcome.DISPUTE_UPHELD, 0)
    assert market.balance(SUBMITTER) == before - 2 * FEE  # escrow and bond came back
    slash = STAKE // 10
    assert stakes(market, [worker, first, second]) == [STAKE - slash, STAKE, STAKE]
    assert [market.balance(s) for s in (first, second)] == [
        balances[0] - FEE + slash // 2, balances[1] - FEE + slash // 2]
    assert all(market.state.worker(s.public_key).open_jobs == 0 for s in (worker, first, second))


def test_dispute_rejected_pays_the_worker_and_the_bond_to_the_verifiers() -> None:
    market = ready_market()
    job_id, (worker, first, second, *_) = disputed(market)
    bond = market.job(job_id).bond
    balances = [market.balance(s) for s in (worker, first, second)]
    market.post(first, job_id)
    market.post(second, job_id)
    job = market.job(job_id)
    assert (job.status, job.outcome) == (JobStatus.ACCEPTED, JobOutcome.DISPUTE_REJECTED)
    assert [market.balance(s) for s in (worker, first, second)] == [
        balances[0] + WORKER_PAY, balances[1] - FEE + bond // 2, balances[2] - FEE + bond // 2]
    assert stakes(market, [worker, first, second]) == [STAKE] * 3


def test_outvoted_verifier_is_slashed_and_pays_the_honest_one() -> None:
    market = ready_market()
    job_id, (worker, first, second, *_) = disputed(market)
    bond = market.job(job_id).bond
    honest = market.balance(first)
    market.post(first, job_id)
    market.post(second, job_id, OUTPUT_B, HASH_B)
    slash = STAKE // 10
    assert market.job(job_id).outcome is JobOutcome.DISPUTE_REJECTED
    assert stakes(market, [worker, first, second]) == [STAKE, STAKE, STAKE - slash]
    assert market.balance(first) == honest - FEE + bond + slash


def test_dispute_without_majority_lets_the_result_stand_at_the_timeout() -> None:
    market = ready_market()
    before = market.balance(SUBMITTER)
    job_id, (worker, first, second, *_) = disputed(market)
    pay = market.balance(worker)
    market.post(first, job_id, OUTPUT_B, HASH_B)
    assert market.job(job_id).status is JobStatus.DISPUTED  # the second is silent
    assert market.rejection(first, lambda h: job_result(
        h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "job_state"
    assert market.rejection(STRANGER, lambda h: job_result(
        h, job=job_id, output_cid=OUTPUT_B, output_sha256=HASH_B)) == "not_assignee"
    market.block(at_ms=market.job(job_id).timer_ms)
    job = market.job(job_id)
    assert (job.status, job.outcome) == (JobStatus.ACCEPTED, JobOutcome.DISPUTE_UNDECIDED)
    assert market.balance(worker) == pay + WORKER_PAY
    assert market.balance(SUBMITTER) == before - PRICE - 2 * FEE  # paid the job, bond back
    assert stakes(market, [worker, first, second]) == [STAKE] * 3


def test_dispute_rejections() -> None:
    market = ready_market()
    job_id = market.submit()
    assert market.dispute_code(job_id) == "job_state"
    market.post(signer_of(market.job(job_id).assignee), job_id)
    assert market.dispute_code(job_id, sender=STRANGER) == "not_submitter"
    assert market.dispute_code(job_id, bond=market.job(job_id).price // 2 - 1) == "bad_amount"
    market.block(at_ms=market.job(job_id).timer_ms)  # the window passed: settled
    assert market.dispute_code(job_id) == "job_state"


def test_dispute_needs_two_verifiers_and_the_bond() -> None:
    market = ready_market(workers=2)
    assert market.dispute_code(market.completed()) == "no_verifiers"
    rich = Market(dispute_bond_bps=100_000)  # a bond of 10 x 20 FTNS: more than it holds
    rich.register_model(price=20 * PRICE)
    rich.register_workers()
    assert rich.dispute_code(rich.completed(max_price=20 * PRICE)) == "insufficient_balance"


def test_dispute_after_the_window_is_refused_even_before_the_timer_moves() -> None:
    market = ready_market(job_timers_per_block_max=1)
    job_id = market.completed()
    blocker = market.submit()  # its turn ends before the window: it takes the one move
    market.block(at_ms=market.job(job_id).timer_ms)
    assert market.job(blocker).turn == 1 and market.job(job_id).status is JobStatus.COMPLETED
    assert market.dispute_code(job_id) == "window_closed"


# -- expiry, queries, roots --------------------------------------------------------------------

def test_finished_job_expires_after_the_retention_period() -> None:
    market = ready_market()
    job_id = market.submit()
    market.post(signer_of(market.job(job_id).assignee), job_id)
    market.run(SUBMITTER, lambda h: job_accept(h, job=job_id))
    expires = market.job(job_id).timer_ms
    assert expires == market.now_ms + RETENTION_MS
    assert market.state.next_timer_ms() is None  # expiry is not a timer anyone waits for
    market.block(at_ms=expires - 1)
    assert market.state.job(job_id) is not None
    market.block(at_ms=expires)
    assert market.state.job(job_id) is None and job_id in market.state.jobs.changed


def test_queries_by_submitter_assignee_and_work() -> None:
    market = ready_market()
    first, second = market.submit(), market.submit()
    mine = market.state.jobs_by_submitter(SUBMITTER.public_key)
    assert [job_id for job_id, _ in mine] == [first, second]  # submission order
    assert market.state.jobs_by_submitter(STRANGER.public_key) == []
    assert market.state.jobs_by_submitter(SUBMITTER.public_key, limit=1) == mine[:1]
    assignee = market.job(first).assignee
    assert first in [j for j, _ in market.state.jobs_by_assignee(assignee)]
    assert first in [j for j, _ in market.state.work_for(assignee)]
    market.post(signer_of(assignee), first)
    assert first not in [j for j, _ in market.state.work_for(assignee)]
    assert market.state.assignee_now(first) is None  # completed: no turn runs
    assert market.state.assignee_now(b"\x03" * 32) is None


def test_state_root_covers_the_market_and_account_proofs_still_verify() -> None:
    market = ready_market()
    job_id = market.submit()
    block = market.blocks[-1]
    proof = market.state.prove_account(SUBMITTER.public_key)
    assert proof is not None and verify_account_proof(block.state_root, proof)
    forged = dataclasses.replace(proof, market_root=b"\x00" * 32)
    assert not verify_account_proof(block.state_root, forged)
    job_proof = market.state.prove_job(job_id)
    assert job_proof is not None and verify_job_proof(block.state_root, job_proof)
    richer = dataclasses.replace(job_proof, job=dataclasses.replace(job_proof.job, price=2))
    assert not verify_job_proof(block.state_root, richer)
    assert market.state.prove_job(b"\x04" * 32) is None
    plain = market.state.snapshot()
    again = LedgerState.from_snapshot(market.genesis, plain)
    assert again.state_root == market.state.state_root and again.job(job_id) == market.job(job_id)
    assert again.next_timer_ms() == market.state.next_timer_ms()
    plain["jobs"][0][6] = (2 * PRICE).to_bytes(16, "big")  # a job that pays more
    with pytest.raises(Exception, match="snapshot"):
        LedgerState.from_snapshot(market.genesis, plain)


def test_existing_kinds_take_the_empty_args_map() -> None:
    body = TxBody(chain_id="c", kind=TxKind.TRANSFER, sender=b"\x01" * 32, nonce=0, fee=1,
                  amount=1, to=b"\x02" * 32)
    assert body.to_plain()["args"] == {}
    with pytest.raises(AssertionError):
        TxBody(chain_id="c", kind=TxKind.JOB_ACCEPT, sender=b"\x01" * 32, nonce=0, fee=1)


@pytest.mark.parametrize(("params", "match"), [
    ({"job_candidates_max": 2}, "job_candidates_max"),
    ({"job_candidates_max": 33}, "job_candidates_max"),
    ({"slash_bps": 10_001}, "slash_bps"),
    ({"job_fee_bps": -1}, "job_fee_bps"),
    ({"job_assign_timeout_ms": 0}, "job_assign_timeout_ms"),
    ({"job_deadline_max_ms": 10, "job_assign_timeout_ms": 11}, "job_deadline_max_ms"),
    ({"model_workers_max": 11, "workers_max": 10}, "model_workers_max"),
])
def test_job_params_are_bounded_naming_the_field(params: dict, match: str) -> None:
    with pytest.raises(GenesisError, match=match):
        Params(**params)
    assert Params(job_fee_bps=0, slash_bps=0, dispute_bond_bps=0).slash_bps == 0
