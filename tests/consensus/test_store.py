"""SQLite store: persist, crash (uncommitted or SIGKILL), reopen, recover, refuse other chains."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from consensus.codec import Ed25519Signer
from consensus.errors import StoreError
from consensus.ledger import LedgerState
from consensus.messages import Prepare, PreparedProof, PrePrepare, sign_message
from consensus.replica import Replica
from consensus.replica_effects import (
    PersistBlock,
    PersistCheckpoint,
    PersistSlot,
    PersistView,
    SlotRecord,
    Start,
)
from consensus.store import LedgerStore, _pack, _slot_from, _slot_plain, _unpack
from simulations.pbft_adapter import PbftSimAdapter
from simulations.sim import Address, NetworkModel, Simulator
from tests.consensus.cluster import Cluster
from tests.consensus.helpers import make_genesis, signers, transfer

ROOT = Path(__file__).resolve().parents[2]
PERSIST = (PersistView, PersistSlot, PersistBlock, PersistCheckpoint)


class StoreAdapter(PbftSimAdapter):
    """Writes every replica's persist effects to a real SQLite file, in effect order."""

    def __init__(self, n: int, stores: dict[Address, LedgerStore]) -> None:
        super().__init__(n)
        self.stores = stores

    def apply(self, sim: Simulator, address: Address, effects: list) -> None:
        batch: list = []
        rest: list = []
        for effect in effects:
            if isinstance(effect, PERSIST):
                if rest:
                    self._flush(sim, address, batch, rest)
                    batch, rest = [], []
                batch.append(effect)
            else:
                rest.append(effect)
        self._flush(sim, address, batch, rest)

    def _flush(self, sim: Simulator, address: Address, batch: list, rest: list) -> None:
        if batch:
            self.stores[address].write_batch(batch)  # durable before the sends that follow
        super().apply(sim, address, rest)


def sqlite_cluster(tmp_path: Path, seed: int = 2) -> tuple[Cluster, dict[Address, LedgerStore]]:
    stores: dict[Address, LedgerStore] = {}
    holder: dict[str, Cluster] = {}

    def factory(address: Address, disk: object, rng: object) -> Replica:
        cluster = holder["cluster"]
        store = stores.get(address)
        if store is None:
            store = stores[address] = LedgerStore(tmp_path / f"r{address}.sqlite",
                                                  cluster.genesis)
        return Replica(index=address, signer=cluster.signers[address],
                       genesis=cluster.genesis, config=cluster.config,
                       recovered=store.recover())

    class Late(Cluster):
        def __init__(self) -> None:
            holder["cluster"] = self
            super().__init__(4, seed=seed, network=NetworkModel(loss=0.02),
                             adapter=StoreAdapter(4, stores), factory=factory)

    return Late(), stores


def test_replica_restarts_from_sqlite_after_crash_and_agrees(tmp_path: Path) -> None:
    cluster, stores = sqlite_cluster(tmp_path)
    cluster.submit(40, at_ms=100, spacing_ms=40, targets=[0, 1, 3])

    crashed_at: list[int] = []

    def kill_and_reopen(sim: Simulator) -> None:
        crashed_at.append(cluster.core(2).executed)
        sim.crash(2)
        stores.pop(2).close()  # the process died; a new one opens the file again

    cluster.sim.schedule(600, kill_and_reopen)
    cluster.sim.schedule(1_200, lambda s: (s.restart(2), s.inject(2, Start())))
    cluster.sim.run_until(1_100)
    assert crashed_at[0] >= 1  # it had committed blocks before it died
    peek = LedgerStore(tmp_path / "r2.sqlite", cluster.genesis)
    assert peek.recover().ledger.height == crashed_at[0]  # and reads them back
    peek.close()
    cluster.sim.run_until(15_000)
    cluster.assert_agreement()
    assert len(set(cluster.heights())) == 1 and cluster.heights()[2] > crashed_at[0]
    reopened = LedgerStore(tmp_path / "r2.sqlite", cluster.genesis)
    ledger = reopened.ledger()
    assert ledger.state_root == cluster.core(0).ledger.state_root
    block, certificate = reopened.block(ledger.height)
    assert block.state_root == ledger.state_root and len(certificate) >= 3
    assert reopened.head_height() == ledger.height
    reopened.close()


def test_uncommitted_write_is_lost_and_recovery_returns_last_commit(tmp_path: Path) -> None:
    cluster, stores = sqlite_cluster(tmp_path, seed=4)
    cluster.submit(12, at_ms=100, targets=[0, 1, 2, 3])
    cluster.sim.run_until(3_000)
    store = stores[1]
    before = store.recover()
    assert before is not None and before.ledger.height >= 1
    store._conn.execute("BEGIN IMMEDIATE")
    store._conn.execute("DELETE FROM accounts")
    store._conn.execute("INSERT OR REPLACE INTO meta VALUES ('view', x'92cd03e7c3')")
    store._conn.close()  # crash before COMMIT
    again = LedgerStore(tmp_path / "r1.sqlite", cluster.genesis)
    after = again.recover()
    assert after is not None
    assert after.ledger.state_root == before.ledger.state_root
    assert (after.view, after.in_view_change) == (before.view, before.in_view_change)
    assert [r.seq for r in after.slots] == [r.seq for r in before.slots]
    again.close()


def test_sigkill_mid_transaction_keeps_the_last_committed_state(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from consensus.store import LedgerStore
        from consensus.replica_effects import PersistView
        from simulations.pbft_scenario import make_genesis, _validator_signers, _user_signers
        genesis = make_genesis(_validator_signers(4), _user_signers())
        store = LedgerStore({str(tmp_path / 'k.sqlite')!r}, genesis)
        store.write_batch([PersistView(view=5, in_view_change=False)])
        store._conn.execute("BEGIN IMMEDIATE")
        store._write(PersistView(view=9, in_view_change=True))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr.decode()
    from simulations.pbft_scenario import _user_signers, _validator_signers, make_genesis
    genesis = make_genesis(_validator_signers(4), _user_signers())
    store = LedgerStore(tmp_path / "k.sqlite", genesis)
    recovered = store.recover()
    assert recovered is not None and (recovered.view, recovered.in_view_change) == (5, False)
    store.close()


def test_store_refuses_a_data_dir_of_another_chain(tmp_path: Path) -> None:
    from simulations.pbft_scenario import _user_signers, _validator_signers, make_genesis
    first = make_genesis(_validator_signers(4), _user_signers())
    LedgerStore(tmp_path / "x.sqlite", first).close()
    other = make_genesis(_validator_signers(7), _user_signers())
    with pytest.raises(StoreError, match="another data dir"):
        LedgerStore(tmp_path / "x.sqlite", other)
    fresh = LedgerStore(tmp_path / "y.sqlite", first)
    assert fresh.recover() is None and fresh.ledger().height == 0
    fresh.close()


def test_checkpoint_prunes_slots_and_keeps_snapshot(tmp_path: Path) -> None:
    cluster, stores = sqlite_cluster(tmp_path, seed=6)
    for index in range(10):
        cluster.submit(1, at_ms=100 + 200 * index, to=0)
    cluster.sim.run_until(6_000)
    recovered = stores[0].recover()
    assert recovered is not None and recovered.stable_seq >= 4
    assert all(record.seq > recovered.stable_seq for record in recovered.slots)
    assert recovered.stable_state is not None
    assert recovered.stable_state.state_root == recovered.stable_block.state_root


def test_a_prepared_slot_is_written_with_one_copy_of_its_block_and_reads_back(
        tmp_path: Path) -> None:
    """The prepared proof's pre-prepare is the slot's own: stored once (None in the
    proof), read back as the same message; a row in the older form (two copies) and a
    proof for another pre-prepare still read back as written."""
    signer = Ed25519Signer.from_seed(b"\x07" * 32)
    people = signers(2, offset=60)
    genesis = make_genesis(people, [signer])
    state = LedgerState(genesis)
    block, _ = state.build_block(10, [transfer(people[0], 0, people[1].public_key, 5)])
    other, _ = state.build_block(11, [transfer(people[1], 0, people[0].public_key, 5)])
    pre_prepare = sign_message(PrePrepare(view=0, seq=1, block=block), 0, signer)
    prepares = (sign_message(Prepare(view=0, seq=1, digest=block.block_hash), 1, signer),)
    own = SlotRecord(seq=1, view=0, pre_prepare=pre_prepare,
                     prepared=PreparedProof(pre_prepare=pre_prepare, prepares=prepares))
    plain = _slot_plain(own)
    assert plain[3][0] is None
    assert len(_pack(plain)) < len(_pack(_slot_plain(replace(own, prepared=None)))) + 400
    assert _slot_from(_unpack(_pack(plain))) == own
    older_form = [1, 0, pre_prepare.to_plain(), own.prepared.to_plain()]
    assert _slot_from(_unpack(_pack(older_form))) == own
    elsewhere = sign_message(PrePrepare(view=0, seq=1, block=other), 0, signer)
    mixed = replace(own, prepared=PreparedProof(pre_prepare=elsewhere, prepares=prepares))
    assert _slot_from(_unpack(_pack(_slot_plain(mixed)))) == mixed
