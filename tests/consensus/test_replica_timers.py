"""Job timers drive blocks: with no transaction in sight, the primary proposes empty blocks
when the ledger's next job timer comes due, so turns pass and deadlines refund on time."""

from __future__ import annotations

from consensus.job_args import JobKind
from consensus.job_records import JobStatus
from consensus.job_tx import TxHeader, job_submit, model_register, worker_register
from consensus.replica_effects import ClientRequest
from consensus.tx import SignedTx, TxBody, sign_tx
from simulations.pbft_scenario import _validator_signers
from tests.consensus.cluster import Cluster
from tests.consensus.helpers import CHAIN, FEE, make_genesis
from tests.consensus.market import (
    INPUT,
    MODEL,
    OWNER,
    PRICE,
    STAKE,
    SUBMITTER,
    TEST_PARAMS,
    TIMEOUT_MS,
    WORKERS,
)

EVERYONE = [OWNER, SUBMITTER, *WORKERS[:3]]


def _signed(signer, build) -> SignedTx:  # type: ignore[no-untyped-def]
    header = TxHeader(chain_id=CHAIN, sender=signer.public_key, fee=FEE, nonce=0)
    body: TxBody = build(header)
    return sign_tx(body, signer)


def test_a_job_nobody_runs_is_passed_on_and_refunded_by_empty_blocks() -> None:
    genesis = make_genesis(EVERYONE, _validator_signers(4), **TEST_PARAMS)
    cluster = Cluster(4, genesis=genesis)
    model = _signed(OWNER, lambda h: model_register(h, model=MODEL, royalty_bps=1_000,
                                                       price=PRICE))
    cluster.sim.inject(0, ClientRequest(tx=model.encoded, request_id=None), at_ms=10)
    workers = [_signed(w, lambda h: worker_register(h, models=(MODEL,), stake=STAKE))
               for w in WORKERS[:3]]
    for index, tx in enumerate(workers):  # once the model is on the ledger
        cluster.sim.inject(index, ClientRequest(tx=tx.encoded, request_id=None), at_ms=800)
    submit = _signed(SUBMITTER, lambda h: job_submit(
        h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT, deadline_ms=60_000,
        max_price=PRICE))
    cluster.sim.inject(1, ClientRequest(tx=submit.encoded, request_id=None), at_ms=2_000)
    cluster.sim.run_until(3_000)
    primary = cluster.core(0)
    job = primary.ledger.job(submit.tx_hash)
    assert job is not None and job.status is JobStatus.ASSIGNED
    submitted_at = primary.executed
    balance_before = primary.ledger.account(SUBMITTER.public_key).balance

    cluster.sim.run_until(3_000 + 4 * TIMEOUT_MS + 2_000)  # three turns end, nothing else

    cluster.assert_agreement()
    for address in range(4):
        ledger = cluster.core(address).ledger
        job = ledger.job(submit.tx_hash)
        assert job is not None and job.status is JobStatus.REFUNDED, address
        assert ledger.account(SUBMITTER.public_key).balance == balance_before + PRICE
        assert ledger.next_timer_ms() is None or job.status is JobStatus.REFUNDED
    later = [c.block for c in cluster.commits[0] if c.block.height > submitted_at]
    assert later and all(not block.txs for block in later)  # only timers made these blocks
    assert len(later) <= 6  # one block per due timer, not a block per tick
