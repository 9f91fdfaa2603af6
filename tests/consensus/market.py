"""A small job market to drive ``LedgerState`` block by block in tests.

Every block ``Market`` builds is also replayed with ``apply_block`` on the previous state
(same root, same snapshot) and audited with ``supply_check``, so every test that uses it
also checks determinism and supply conservation.
"""

from __future__ import annotations

from collections.abc import Callable

from consensus.codec import Ed25519Signer, sha256
from consensus.errors import TxRejected
from consensus.genesis import UNITS_PER_FTNS
from consensus.job_args import JobKind
from consensus.job_records import Job, dispute_bond
from consensus.job_tx import (
    TxHeader,
    job_dispute,
    job_result,
    job_submit,
    model_register,
    worker_register,
)
from consensus.ledger import Block, LedgerState, supply_check
from consensus.tx import SignedTx, TxBody, sign_tx
from tests.consensus.helpers import CHAIN, FEE, make_genesis, signers

U = UNITS_PER_FTNS
PRICE = U
STAKE = 10 * U
TIMEOUT_MS = 1_000
WINDOW_MS = 2_000
RETENTION_MS = 5_000
MODEL = "bafkmodel1"
TEACHER_MODEL = "bafkteacher1"
INPUT = "bafkinput1"
OUTPUT_A, OUTPUT_B = "bafkoutputa", "bafkoutputb"
HASH_A, HASH_B = sha256(b"a"), sha256(b"b")

VALIDATORS = signers(4)
OWNER, TEACHER_OWNER, SUBMITTER, STRANGER = signers(4, offset=40)
WORKERS = signers(5, offset=50)
EVERYONE = [OWNER, TEACHER_OWNER, SUBMITTER, STRANGER, *WORKERS]

TEST_PARAMS = {"worker_stake_min": STAKE, "job_assign_timeout_ms": TIMEOUT_MS,
               "challenge_window_ms": WINDOW_MS, "job_retention_ms": RETENTION_MS,
               "job_deadline_max_ms": 100_000, "job_fee_bps": 100, "slash_bps": 1_000,
               "dispute_bond_bps": 5_000}

Build = Callable[[TxHeader], TxBody]


class Market:
    """A ledger plus a clock; ``run`` includes one transaction in a new block."""

    def __init__(self, **params: int) -> None:
        self.genesis = make_genesis(EVERYONE, VALIDATORS, **{**TEST_PARAMS, **params})
        self.state = LedgerState(self.genesis)
        self.now_ms = 0
        self.blocks: list[Block] = []

    def header(self, signer: Ed25519Signer) -> TxHeader:
        return TxHeader(chain_id=CHAIN, sender=signer.public_key, fee=FEE,
                        nonce=self.state.account(signer.public_key).nonce)

    def sign(self, signer: Ed25519Signer, build: Build) -> SignedTx:
        return sign_tx(build(self.header(signer)), signer)

    def block(self, *txs: SignedTx, at_ms: int | None = None) -> LedgerState:
        """A block at ``at_ms`` (default: 1 ms later) that must include every tx."""
        self.now_ms = self.now_ms + 1 if at_ms is None else at_ms
        previous = self.state
        block, state = previous.build_block(self.now_ms, txs)
        if len(block.txs) != len(txs):
            empty = previous.build_block(self.now_ms, [])[1]
            for tx in txs:
                empty.check_tx(tx)  # raises the reason of the first one left out
            raise AssertionError("a transaction was left out of the block")
        replayed = previous.apply_block(block)
        assert replayed.snapshot() == state.snapshot()
        supply_check(state)
        self.state = state
        self.blocks.append(block)
        return state

    def run(self, signer: Ed25519Signer, build: Build) -> SignedTx:
        tx = self.sign(signer, build)
        self.block(tx)
        return tx

    def rejection(self, signer: Ed25519Signer, build: Build) -> str:
        """The reason code ``check_tx`` gives (the state does not change)."""
        tx = self.sign(signer, build)
        try:
            self.state.check_tx(tx)
        except TxRejected as error:
            assert error.message
            return error.reason_code
        raise AssertionError("the transaction was accepted")

    def job(self, job_id: bytes) -> Job:
        job = self.state.job(job_id)
        assert job is not None
        return job

    def balance(self, signer: Ed25519Signer) -> int:
        return self.state.account(signer.public_key).balance

    # -- common set-ups ----------------------------------------------------------------------

    def register_model(self, royalty_bps: int = 1_000, price: int = PRICE) -> None:
        self.run(OWNER, lambda h: model_register(h, model=MODEL, royalty_bps=royalty_bps,
                                                 price=price))

    def register_workers(self, count: int = len(WORKERS), models: tuple[str, ...] = (MODEL,)
                         ) -> None:
        self.block(*[self.sign(w, lambda h: worker_register(h, models=models, stake=STAKE))
                     for w in WORKERS[:count]])

    def submit(self, deadline_ms: int = 50_000, max_price: int = PRICE) -> bytes:
        tx = self.run(SUBMITTER, lambda h: job_submit(
            h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid=INPUT,
            deadline_ms=deadline_ms, max_price=max_price))
        return tx.tx_hash

    def completed(self, max_price: int = PRICE) -> bytes:
        """A new job whose assignee posted ``HASH_A``."""
        job_id = self.submit(max_price=max_price)
        self.post(signer_of(self.job(job_id).assignee), job_id)
        return job_id

    def dispute_code(self, job_id: bytes, bond: int | None = None,
                     sender: Ed25519Signer = SUBMITTER) -> str:
        """The reason a dispute of ``job_id`` is refused (the right bond by default)."""
        if bond is None:
            bond = dispute_bond(self.job(job_id).price, self.genesis.params.dispute_bond_bps)
        return self.rejection(sender, lambda h: job_dispute(h, job=job_id, bond=bond))

    def post(self, worker: Ed25519Signer, job_id: bytes, output: str = OUTPUT_A,
             digest: bytes = HASH_A) -> None:
        self.run(worker, lambda h: job_result(h, job=job_id, output_cid=output,
                                              output_sha256=digest))


def signer_of(key: bytes) -> Ed25519Signer:
    return next(s for s in EVERYONE if s.public_key == key)


def ready_market(workers: int = len(WORKERS), **params: int) -> Market:
    market = Market(**params)
    market.register_model()
    market.register_workers(workers)
    return market
