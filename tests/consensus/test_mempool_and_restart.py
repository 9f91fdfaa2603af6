"""Mempool bounds, and a restarted primary that never signs two blocks for one slot."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.errors import TxRejected
from consensus.ledger import LedgerState
from consensus.mempool import Mempool
from consensus.messages import PrePrepare
from consensus.replica_effects import Broadcast, Send, Start
from consensus.tx import TxKind
from tests.consensus.cluster import Cluster
from tests.consensus.helpers import make_genesis, signers, transfer, tx

PEOPLE = signers(3, offset=40)
VALIDATORS = signers(4)


def test_mempool_bounds_total_and_per_sender_and_orders_by_nonce() -> None:
    state = LedgerState(make_genesis(PEOPLE, VALIDATORS))
    pool = Mempool(total_max=3, per_sender_max=2)
    alice, bob, carol = PEOPLE
    second = transfer(alice, 1, bob.public_key, 1)
    first = transfer(alice, 0, bob.public_key, 1)
    pool.admit(second.encoded, state, 0)  # a nonce one ahead is admitted
    pool.admit(first.encoded, state, 1)
    assert [t.body.nonce for t in pool.candidates(10)] == [0, 1]
    with pytest.raises(TxRejected) as info:
        pool.admit(transfer(alice, 2, bob.public_key, 1).encoded, state, 2)
    assert info.value.reason_code in ("sender_quota", "nonce_gap")
    pool.admit(transfer(bob, 0, alice.public_key, 1).encoded, state, 3)
    with pytest.raises(TxRejected, match="mempool_full"):
        pool.admit(transfer(carol, 0, alice.public_key, 1).encoded, state, 4)
    with pytest.raises(TxRejected, match="duplicate"):
        pool.admit(first.encoded, state, 5)
    with pytest.raises(TxRejected, match="fee_too_low"):
        Mempool(10, 10).admit(tx(carol, TxKind.TRANSFER, 0, 1, bob.public_key, fee=1).encoded,
                              state, 0)
    block, after = state.build_block(10, pool.candidates(10))
    assert len(block.txs) == 3
    pool.prune(after)
    assert len(pool) == 0


transfers = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 120)),
                     max_size=25)


@given(before=transfers, after=transfers, block_size=st.integers(0, 12),
       full=st.booleans())
@settings(max_examples=150, deadline=None)
def test_prune_keeps_exactly_what_check_tx_would_keep(
        before: list[tuple[int, int, int]], after: list[tuple[int, int, int]],
        block_size: int, full: bool) -> None:
    """Prune's shortcut (used nonces by the nonce heap, only the next nonce checked)
    against the rule it implements: a pending transaction stays iff the new state's
    check_tx accepts it or only finds a nonce gap."""
    state = LedgerState(make_genesis(PEOPLE, VALIDATORS))
    pool = Mempool(total_max=1000, per_sender_max=1000)

    def admit(ops: list[tuple[int, int, int]]) -> None:
        for sender, nonce, amount in ops:
            sent = transfer(PEOPLE[sender], nonce, VALIDATORS[0].public_key, amount * 10**18)
            with contextlib.suppress(TxRejected):
                pool.admit(sent.encoded, state, 0)

    admit(before)
    _, state = state.build_block(10, pool.candidates(block_size))
    admit(after)  # pending: what the block left (some made invalid by it), and newcomers
    pending = {t.tx_hash: t for t in pool.candidates(1000)}
    pool.prune(state, None if full else state.changed_keys | {p.public_key for p in PEOPLE})

    def stays(pending_tx: Any) -> bool:
        try:
            state.check_tx(pending_tx)
        except TxRejected as error:
            return error.reason_code == "nonce_gap"
        return True

    assert {t.tx_hash for t in pool.candidates(1000)} == {
        h for h, t in pending.items() if stays(t)}
    assert pool.has_executable(state) == any(
        t.body.nonce == state.account(t.body.sender).nonce for t in pool.candidates(1000))


class Recorder:
    """Wraps a replica and remembers every pre-prepare it signs."""

    def __init__(self, inner: Any, seen: dict[tuple[int, int], set[bytes]]) -> None:
        self.inner = inner
        self.seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def handle(self, now_ms: int, event: Any) -> list[Any]:
        effects = self.inner.handle(now_ms, event)
        for effect in effects:
            if type(effect) in (Broadcast, Send) and type(effect.message.body) is PrePrepare:
                body = effect.message.body
                self.seen.setdefault((body.view, body.seq), set()).add(body.block.block_hash)
        return effects


def test_restarted_primary_resends_its_persisted_proposal_instead_of_a_new_one() -> None:
    seen: dict[tuple[int, int], set[bytes]] = {}
    cluster = Cluster(4, wrap=lambda a, r, rng: Recorder(r, seen) if a == 0 else r)
    cluster.submit(3, at_ms=100, to=0)
    cluster.sim.schedule(125, lambda s: s.partition([[0], [1, 2, 3]]))  # proposal cut off
    cluster.sim.schedule(400, lambda s: s.crash(0))
    cluster.submit(5, at_ms=650, to=0)  # after the restart: something new to propose
    cluster.sim.schedule(600, lambda s: (s.restart(0), s.inject(0, Start())))
    cluster.sim.schedule(800, lambda s: s.heal())
    cluster.sim.run_until(600)
    assert (0, 1) in seen  # it had proposed before the crash
    cluster.sim.run_until(900)
    assert all(len(digests) == 1 for digests in seen.values()), seen
    cluster.sim.run_until(10_000)
    cluster.assert_agreement()
    assert all(len(digests) == 1 for (view, _), digests in seen.items() if view == 0)
    assert min(cluster.heights()) >= 1
