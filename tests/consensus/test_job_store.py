"""The store keeps the job market: rows per block, deletions on expiry, restart, transfer."""

from __future__ import annotations

from pathlib import Path

from consensus.job_records import JobStatus
from consensus.job_tx import job_accept, job_failure
from consensus.replica_effects import PersistBlock
from consensus.store import LedgerStore
from tests.consensus.market import RETENTION_MS, SUBMITTER, Market, ready_market, signer_of


def persist_all(market: Market, store: LedgerStore, states: list, start: int = 0) -> None:
    for block, state in zip(market.blocks[start:], states[start:], strict=True):
        store.write_batch([PersistBlock(block=block, certificate=(), state=state)])


class Recording(Market):
    """A market that keeps every state, to persist them block by block."""

    def __init__(self, **params: int) -> None:
        super().__init__(**params)
        self.states: list = []

    def block(self, *txs, at_ms=None):
        state = super().block(*txs, at_ms=at_ms)
        self.states.append(state)
        return state


def recording_market() -> Recording:
    market = Recording()
    market.register_model()
    market.register_workers()
    return market


def test_market_survives_a_restart_and_expired_jobs_lose_their_rows(tmp_path: Path) -> None:
    market = recording_market()
    done, failing, open_job = market.submit(), market.submit(), market.submit()
    market.post(signer_of(market.job(done).assignee), done)
    market.run(SUBMITTER, lambda h: job_accept(h, job=done))
    market.run(signer_of(market.job(failing).assignee), lambda h: job_failure(h, job=failing))
    store = LedgerStore(tmp_path / "l.sqlite", market.genesis)
    persist_all(market, store, market.states)
    store.close()

    reopened = LedgerStore(tmp_path / "l.sqlite", market.genesis)
    ledger = reopened.ledger()
    assert ledger.state_root == market.state.state_root
    assert ledger.snapshot() == market.state.snapshot()
    assert ledger.next_timer_ms() == market.state.next_timer_ms()
    assert ledger.job(done).status is JobStatus.ACCEPTED and ledger.job(open_job) is not None
    assert ledger.job(failing).turn == 1

    mark = len(market.blocks)
    market.block(at_ms=market.now_ms + RETENTION_MS)  # `done` expires
    assert market.state.job(done) is None
    persist_all(market, reopened, market.states, start=mark)
    rows = reopened._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    assert rows == len(market.state.jobs) == 2
    assert reopened.ledger().state_root == market.state.state_root
    reopened.close()


def test_state_transfer_rewrites_every_market_row(tmp_path: Path) -> None:
    market = ready_market()
    market.submit()
    store = LedgerStore(tmp_path / "t.sqlite", market.genesis)
    store._conn.execute("INSERT INTO jobs VALUES (?, ?)", (b"\x09" * 32, b"\x90"))  # stale
    store.write_batch([PersistBlock(block=market.blocks[-1], certificate=(),
                                    state=market.state, snapshot_installed=True)])
    assert store.ledger().snapshot() == market.state.snapshot()
    store.close()
