"""The ledger and log store: committed blocks, ledger state and replica safety state in SQLite.

Rules:
1. Plain synchronous sqlite3 in WAL mode with ``synchronous=FULL``: a committed transaction
   survives SIGKILL and power loss. One writer per database (the shell calls it from one
   worker thread, ``trio.to_thread.run_sync``); this module never starts threads.
2. ``write_batch(effects)`` writes consecutive ``Persist*`` effects of one ``handle`` call in
   ONE transaction and returns only after COMMIT; the shell performs the effects that follow
   (sends) only after it returns. That is the replica's persist-before-send contract.
3. A data dir belongs to one chain: the genesis hash is written at creation and checked at
   every open (``StoreError`` names both hashes).
4. Pair assertions: what ``recover`` reads back is checked: the ledger snapshot must match
   its state root and the genesis supply (``LedgerState.from_snapshot``), and the head block
   row must have the ledger's height and hash.

Tables: ``meta`` (key -> msgpack value), ``blocks`` (height, hash, block, certificate),
``accounts`` (public key -> account), ``models`` / ``workers`` / ``jobs`` (model CID,
worker key, job id -> record; a row is deleted when its record leaves the state), ``slots``
(seq -> slot record, deleted below the stable checkpoint). The stable checkpoint's ledger
snapshot is kept as one blob so a restarted replica can still serve state transfer from it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack

from consensus.errors import StoreError
from consensus.genesis import Genesis
from consensus.ledger import Account, Block, BlockInvalid, LedgerState
from consensus.messages import PreparedProof, Signed, decode_signed
from consensus.replica_effects import (
    PersistBlock,
    PersistCheckpoint,
    PersistSlot,
    PersistView,
    Recovered,
    SlotRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, hash BLOB NOT NULL UNIQUE,
                                   block BLOB NOT NULL, certificate BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (key BLOB PRIMARY KEY, account BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS slots (seq INTEGER PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS models (key TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS workers (key BLOB PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (key BLOB PRIMARY KEY, record BLOB NOT NULL);
"""
MARKET_TABLES = ("models", "workers", "jobs")
"""The job market's tables: one row per record, named as ``LedgerState``'s attributes and
its ``snapshot()`` keys (fixed names: never built from input)."""
RECENT_BLOCKS_MAX = 256
"""Blocks handed to a restarted replica for state transfer (``blocks_retained_max``)."""


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)


def _signed_list(plain: Any) -> tuple[Signed, ...]:
    return tuple(decode_signed(item) for item in plain)


def _slot_plain(record: SlotRecord) -> list[Any]:
    """A slot's row. The prepared proof nearly always holds the slot's own pre-prepare
    (the whole block): that one is written as None, not a second copy of the block."""
    prepared = None
    if record.prepared is not None:
        proof = record.prepared
        same = (proof.pre_prepare.signer == record.pre_prepare.signer
                and proof.pre_prepare.signature == record.pre_prepare.signature)
        prepared = [None if same else proof.pre_prepare.to_plain(),
                    [p.to_plain() for p in proof.prepares]]
    return [record.seq, record.view, record.pre_prepare.to_plain(), prepared]


def _slot_from(plain: Any) -> SlotRecord:
    seq, view, pre_prepare_plain, prepared = plain
    pre_prepare = decode_signed(pre_prepare_plain)
    proof = None
    if prepared is not None:  # rows written before the None form hold the copy
        proof = PreparedProof(
            pre_prepare=pre_prepare if prepared[0] is None else decode_signed(prepared[0]),
            prepares=_signed_list(prepared[1]))
    return SlotRecord(seq=seq, view=view, pre_prepare=pre_prepare, prepared=proof)


class LedgerStore:
    """SQLite persistence for one replica (or follower); see the module rules."""

    def __init__(self, path: str | Path, genesis: Genesis) -> None:
        self.path = Path(path)
        self.genesis = genesis
        # check_same_thread=False: the node calls the store from worker threads, one at a
        # time (its ledger service serialises every call), never concurrently.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        expected = genesis.genesis_hash()
        found = self._meta("genesis_hash")
        if found is None:
            self._conn.execute("INSERT INTO meta VALUES ('genesis_hash', ?)", (_pack(expected),))
        elif found != expected:
            raise StoreError(f"{self.path} holds chain genesis {found.hex()[:16]}, not "
                             f"{expected.hex()[:16]}: use another data dir")

    def close(self) -> None:
        self._conn.close()

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else _unpack(row[0])

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _pack(value)))

    # -- writing ---------------------------------------------------------------------------

    def write_batch(self, effects: Iterable[Any]) -> None:
        """Write ``Persist*`` effects in one transaction; durable when this returns."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for effect in effects:
                self._write(effect)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self, effect: Any) -> None:
        kind = type(effect)
        if kind is PersistView:
            self._set_meta("view", [effect.view, effect.in_view_change, effect.epoch])
        elif kind is PersistSlot:
            self._conn.execute("INSERT OR REPLACE INTO slots VALUES (?, ?)",
                               (effect.record.seq, _pack(_slot_plain(effect.record))))
        elif kind is PersistBlock:
            self._write_block(effect)
        elif kind is PersistCheckpoint:
            self._set_meta("stable", [effect.seq, effect.block.to_plain(),
                                      [p.to_plain() for p in effect.proof]])
            self._set_meta("stable_snapshot", effect.state.snapshot())
            self._conn.execute("DELETE FROM slots WHERE seq <= ?", (effect.seq,))
        else:
            raise TypeError(f"not a persist effect: {kind.__name__}")

    def _write_block(self, effect: PersistBlock) -> None:
        block, state = effect.block, effect.state
        certificate = _pack([c.to_plain() for c in effect.certificate])
        self._conn.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?)",
                           (block.height, block.block_hash, _pack(block.to_plain()),
                            certificate))
        rewrite = effect.snapshot_installed or self._meta("ledger") is None
        if rewrite:
            self._conn.execute("DELETE FROM accounts")  # first block: genesis accounts too
            keys: Iterable[bytes] = state.keys
        else:
            keys = sorted(state.changed_keys)
        self._conn.executemany("INSERT OR REPLACE INTO accounts VALUES (?, ?)",
                               [(k, _pack(state.accounts[k].to_plain(k))) for k in keys])
        self._write_market(state, rewrite)
        self._set_meta("ledger", {"height": state.height,
                                  "last_block_hash": state.last_block_hash,
                                  "last_timestamp_ms": state.last_timestamp_ms,
                                  "validators": list(state.validators),
                                  "epoch": state.epoch,
                                  "state_root": state.state_root})

    def _write_market(self, state: LedgerState, rewrite: bool) -> None:
        """Rows of the models, workers and jobs written (or all, after a state transfer)
        by the block that produced ``state``; a record gone from the state loses its row."""
        for name in MARKET_TABLES:
            table = getattr(state, name)
            if rewrite:
                self._conn.execute(f"DELETE FROM {name}")
                keys = table.keys()
            else:
                keys = sorted(table.changed)
            gone = [(k,) for k in keys if k not in table]
            self._conn.executemany(f"DELETE FROM {name} WHERE key = ?", gone)
            self._conn.executemany(
                f"INSERT OR REPLACE INTO {name} VALUES (?, ?)",
                [(k, _pack(table.get(k).to_plain(k))) for k in keys if k in table])

    def _read_ledger_plain(self) -> dict[str, Any] | None:
        meta = self._meta("ledger")
        if meta is None:
            return None
        rows = self._conn.execute("SELECT account FROM accounts ORDER BY key").fetchall()
        plain = {**meta, "accounts": [_unpack(row[0]) for row in rows]}
        for name in MARKET_TABLES:
            rows = self._conn.execute(f"SELECT record FROM {name} ORDER BY key").fetchall()
            plain[name] = [_unpack(row[0]) for row in rows]
        return plain

    # -- reading ---------------------------------------------------------------------------

    def ledger(self) -> LedgerState:
        plain = self._read_ledger_plain()
        if plain is None:
            return LedgerState(self.genesis)
        try:
            return LedgerState.from_snapshot(self.genesis, plain)
        except BlockInvalid as error:
            raise StoreError(f"{self.path}: ledger rows do not match their root: {error}") \
                from error

    def block(self, height: int) -> tuple[Block, tuple[Signed, ...]] | None:
        row = self._conn.execute("SELECT block, certificate FROM blocks WHERE height = ?",
                                 (height,)).fetchone()
        if row is None:
            return None
        return Block.from_plain(_unpack(row[0])), _signed_list(_unpack(row[1]))

    def head_height(self) -> int:
        row = self._conn.execute("SELECT MAX(height) FROM blocks").fetchone()
        return row[0] or 0

    def account(self, key: bytes) -> Account | None:
        row = self._conn.execute("SELECT account FROM accounts WHERE key = ?",
                                 (key,)).fetchone()
        return None if row is None else Account.from_plain(_unpack(row[0]))[1]

    def recover(self) -> Recovered | None:
        """What the replica needs to restart; None for a fresh data dir."""
        view_row = self._meta("view")
        ledger = self.ledger()
        if view_row is None and ledger.height == 0:
            return None
        view, in_view_change, view_epoch = (0, False, 0) if view_row is None else (
            *view_row, 0)[:3]  # rows written before epochs have no third field
        head = self.block(ledger.height) if ledger.height else None
        if ledger.height:
            assert head is not None and head[0].block_hash == ledger.last_block_hash, \
                "head block row differs from the ledger"
        stable = self._meta("stable")
        stable_seq, stable_block, stable_proof, stable_state = 0, None, (), None
        if stable is not None:
            stable_seq = stable[0]
            stable_block = Block.from_plain(stable[1])
            stable_proof = _signed_list(stable[2])
            snapshot = self._meta("stable_snapshot")
            if snapshot is not None and snapshot["height"] == stable_seq:
                stable_state = LedgerState.from_snapshot(self.genesis, snapshot)
        slots = tuple(_slot_from(_unpack(row[0])) for row in self._conn.execute(
            "SELECT record FROM slots ORDER BY seq"))
        recent = tuple(held for held in (self.block(h) for h in range(
            max(1, ledger.height - RECENT_BLOCKS_MAX + 1), ledger.height + 1))
            if held is not None)
        return Recovered(view=view, in_view_change=bool(in_view_change), ledger=ledger,
                         last_certificate=head[1] if head else (), stable_seq=stable_seq,
                         stable_block=stable_block, stable_proof=stable_proof,
                         stable_state=stable_state, slots=slots, recent_blocks=recent,
                         view_epoch=view_epoch)
