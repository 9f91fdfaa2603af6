"""The registry store: the view's entries in SQLite, so the view survives a restart and
answers queries (models by name, architecture or tag; nodes that hold a model; nodes with
a GPU; offers).

Rules:
1. Plain synchronous sqlite3 in WAL mode; the shell calls it from worker threads
   (`trio.to_thread.run_sync`), one call at a time. `synchronous=NORMAL`: in WAL mode a crash
   keeps the database consistent and may lose only the last transactions, which the sync
   protocol fetches again from a peer; the registry is a view, not a ledger.
2. `write` upserts a batch in one transaction and replaces an entry only by a higher seq
   or when the held one has expired: the same rule as view.py, so a batch written out of
   order cannot go back in time.
3. Every query returns live entries only (`expires_at_ms > now`); `delete_expired` removes
   the rest. Every query has a `limit`.
4. An entry's row keeps the exact signed message (`wire`), which sync serves unchanged and
   the receiver verifies again. Tags and holders (model CID -> peer) are index tables.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from prsm_node.registry.messages import KIND_OF_VALUE, Entry, EntryId, Kind
from prsm_node.registry.sync import Cursor, signer_digest
from prsm_node.registry.view import Version

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    signer BLOB NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    seq INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL, received_at_ms INTEGER NOT NULL,
    source TEXT NOT NULL, peer_id TEXT NOT NULL, fingerprint BLOB NOT NULL,
    name TEXT, architecture TEXT, gpu INTEGER NOT NULL, wire BLOB NOT NULL,
    PRIMARY KEY (signer, kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_expiry ON entries (expires_at_ms);
CREATE INDEX IF NOT EXISTS entries_by_name ON entries (kind, name);
CREATE INDEX IF NOT EXISTS entries_by_key ON entries (kind, key);
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT NOT NULL, signer BLOB NOT NULL, key TEXT NOT NULL,
    PRIMARY KEY (tag, signer, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holders (
    cid TEXT NOT NULL, signer BLOB NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    peer_id TEXT NOT NULL, PRIMARY KEY (cid, signer, kind, key)
) WITHOUT ROWID;
"""
FILE_NAME = "registry.sqlite"
LIVE = "expires_at_ms > :now"


@dataclass(frozen=True, slots=True)
class Received:
    """An accepted entry on its way to the store: when and how it reached us."""

    entry: Entry
    received_at_ms: int
    source: str  # "gossip", "sync" or "local"


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _row_json(row: sqlite3.Row) -> dict[str, Any]:
    """A stored entry as JSON-able fields: its body plus who signed it and how it came."""
    body = dict(_unpack(row["wire"])["body"])
    body.pop("kind")
    return body | {
        "signer": row["signer"].hex(),
        "received_at_ms": row["received_at_ms"],
        "source": row["source"],
    }


class RegistryStore:
    """SQLite persistence of the registry view; see the module rules."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # check_same_thread=False: the shell calls from worker threads, one at a time.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- writing -------------------------------------------------------------------------

    def write(self, batch: list[Received]) -> int:
        """Upsert a batch in one transaction (rule 2); returns the rows that changed."""
        changed = 0
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for received in batch:
                changed += self._upsert(received)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return changed

    def _upsert(self, received: Received) -> int:
        entry, body = received.entry, received.entry.body
        cursor = self._conn.execute(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (signer, kind, key) DO UPDATE SET seq=excluded.seq, "
            "expires_at_ms=excluded.expires_at_ms, received_at_ms=excluded.received_at_ms, "
            "source=excluded.source, peer_id=excluded.peer_id, "
            "fingerprint=excluded.fingerprint, name=excluded.name, "
            "architecture=excluded.architecture, gpu=excluded.gpu, wire=excluded.wire "
            "WHERE excluded.seq > entries.seq OR entries.expires_at_ms <= excluded.received_at_ms",
            (
                entry.signer, entry.kind.value, body["key"], entry.seq, entry.expires_at_ms,
                received.received_at_ms, received.source, entry.peer_id, entry.fingerprint,
                body.get("name"), body.get("architecture"), int(bool(body.get("gpus"))),
                entry.wire,
            ),
        )
        if cursor.rowcount != 1:
            return 0
        self._index(entry)
        return 1

    def _index(self, entry: Entry) -> None:
        body, key = entry.body, entry.body["key"]
        self._conn.execute(
            "DELETE FROM holders WHERE signer=? AND kind=? AND key=?",
            (entry.signer, entry.kind.value, key),
        )
        if entry.kind is Kind.MODEL:
            self._conn.execute("DELETE FROM tags WHERE signer=? AND key=?", (entry.signer, key))
            tags = [(tag, entry.signer, key) for tag in body["tags"]]
            self._conn.executemany("INSERT INTO tags VALUES (?,?,?)", tags)
            cids = [body["manifest_cid"]]
        elif entry.kind is Kind.CAPABILITY:
            cids = body["models"]
        else:
            cids = []
        self._conn.executemany(
            "INSERT INTO holders VALUES (?,?,?,?,?)",
            [(cid, entry.signer, entry.kind.value, key, entry.peer_id) for cid in cids],
        )

    def delete_expired(self, now_ms: int) -> int:
        """Remove expired entries and their index rows; returns how many entries went."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            gone = self._conn.execute(
                "DELETE FROM entries WHERE expires_at_ms <= ?", (now_ms,)
            ).rowcount
            if gone:
                self._conn.execute(
                    "DELETE FROM tags WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE "
                    "e.signer=tags.signer AND e.kind='model' AND e.key=tags.key)"
                )
                self._conn.execute(
                    "DELETE FROM holders WHERE NOT EXISTS (SELECT 1 FROM entries e WHERE "
                    "e.signer=holders.signer AND e.kind=holders.kind AND e.key=holders.key)"
                )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return gone

    # -- reading back --------------------------------------------------------------------

    def versions(self, now_ms: int) -> Iterator[tuple[EntryId, Version]]:
        """Every live entry's version, to rebuild the view at start."""
        rows = self._conn.execute(
            f"SELECT signer, kind, key, seq, expires_at_ms, fingerprint FROM entries WHERE {LIVE}",
            {"now": now_ms},
        )
        for row in rows:
            entry_id = EntryId(kind=KIND_OF_VALUE[row[1]], signer=row[0], key=row[2])
            yield entry_id, Version(row[3], row[4], row[5])

    def own_bodies(self, signer: bytes, kind: Kind, now_ms: int) -> list[dict[str, Any]]:
        """The bodies of our own live entries of one kind (to renew them)."""
        rows = self._conn.execute(
            f"SELECT wire FROM entries WHERE signer=:signer AND kind=:kind AND {LIVE}",
            {"signer": signer, "kind": kind.value, "now": now_ms},
        )
        return [dict(_unpack(row[0])["body"]) for row in rows]

    def known_models(self, cids: list[str], now_ms: int) -> list[str]:
        """Those of `cids` that some live model announcement names."""
        found: list[str] = []
        for start in range(0, len(cids), 256):
            chunk = cids[start:start + 256]
            marks = ",".join(f":c{index}" for index in range(len(chunk)))
            rows = self._conn.execute(
                f"SELECT DISTINCT key FROM entries WHERE kind='model' AND {LIVE} "
                f"AND key IN ({marks})",
                {f"c{index}": cid for index, cid in enumerate(chunk)} | {"now": now_ms},
            )
            found += [row[0] for row in rows]
        return found

    def counts(self, now_ms: int) -> dict[str, int]:
        rows = self._conn.execute(
            f"SELECT kind, count(*) FROM entries WHERE {LIVE} GROUP BY kind", {"now": now_ms}
        )
        return {kind.value: 0 for kind in Kind} | {row[0]: row[1] for row in rows}

    # -- queries -------------------------------------------------------------------------

    def models(
        self,
        now_ms: int,
        *,
        name: str | None = None,
        architecture: str | None = None,
        tag: str | None = None,
        cid: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Live model announcements matching every filter given (exact matches)."""
        where = ["kind='model'", LIVE]
        params: dict[str, Any] = {"now": now_ms, "limit": limit}
        for column, value in (("name", name), ("architecture", architecture), ("key", cid)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        if tag is not None:
            where.append(
                "EXISTS (SELECT 1 FROM tags t WHERE t.tag=:tag AND t.signer=entries.signer "
                "AND t.key=entries.key)"
            )
            params["tag"] = tag
        rows = self._conn.execute(
            f"SELECT * FROM entries WHERE {' AND '.join(where)} "
            "ORDER BY name, key, signer LIMIT :limit",
            params,
        )
        return [_row_json(row) for row in rows]

    def model_cids(self, name_or_cid: str, now_ms: int, limit: int = 256) -> list[str]:
        """The manifest CIDs a user means by a model name, or the CID itself."""
        rows = self._conn.execute(
            f"SELECT DISTINCT key FROM entries WHERE kind='model' AND {LIVE} "
            "AND (name = :text OR key = :text) LIMIT :limit",
            {"text": name_or_cid, "now": now_ms, "limit": limit},
        )
        return [row[0] for row in rows]

    def holders(self, cids: list[str], now_ms: int, limit: int = 1000) -> dict[str, list[str]]:
        """peer id -> the CIDs among `cids` it holds, from model announcements and
        capabilities' `models` lists (live entries only)."""
        found: dict[str, list[str]] = {}
        for cid in cids:
            rows = self._conn.execute(
                "SELECT DISTINCT h.peer_id FROM holders h JOIN entries e ON e.signer=h.signer "
                f"AND e.kind=h.kind AND e.key=h.key WHERE h.cid=:cid AND e.{LIVE} LIMIT :limit",
                {"cid": cid, "now": now_ms, "limit": limit},
            )
            for row in rows:
                found.setdefault(row[0], []).append(cid)
        return found

    def nodes(
        self,
        now_ms: int,
        *,
        gpu: bool = False,
        peer_ids: list[str] | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Live capability entries (one per node), optionally with a GPU or among peers."""
        where = ["kind='capability'", LIVE]
        if gpu:
            where.append("gpu = 1")
        params: dict[str, Any] = {"now": now_ms, "limit": limit}
        if peer_ids is not None:
            marks = ",".join(f":p{index}" for index in range(len(peer_ids)))
            where.append(f"peer_id IN ({marks})")
            params |= {f"p{index}": peer for index, peer in enumerate(peer_ids)}
        rows = self._conn.execute(
            f"SELECT * FROM entries WHERE {' AND '.join(where)} ORDER BY peer_id LIMIT :limit",
            params,
        )
        return [_row_json(row) for row in rows]

    def offers(
        self,
        now_ms: int,
        *,
        job_kind: str | None = None,
        model_cid: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            f"SELECT * FROM entries WHERE kind='offer' AND {LIVE} "
            "ORDER BY received_at_ms, signer, key",
            {"now": now_ms},
        )
        found = []
        for row in rows:  # filters on body fields; offers are few and short-lived
            item = _row_json(row)
            if job_kind is not None and item["job_kind"] != job_kind:
                continue
            if model_cid is not None and item["model_cid"] != model_cid:
                continue
            found.append(item)
            if len(found) >= limit:
                break
        return found

    def capability_of(self, peer_id: str, now_ms: int) -> dict[str, Any] | None:
        rows = self.nodes(now_ms, peer_ids=[peer_id], limit=1)
        return rows[0] if rows else None

    # -- sync (sync.py) ------------------------------------------------------------------

    def summary(
        self, after: bytes, limit: int, now_ms: int
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """(signer, digest) of the first `limit` signers after `after`; and whether that
        was the last of them."""
        signers = [
            row[0]
            for row in self._conn.execute(
                f"SELECT DISTINCT signer FROM entries WHERE signer > :after AND {LIVE} "
                "ORDER BY signer LIMIT :limit",
                {"after": after, "now": now_ms, "limit": limit + 1},
            )
        ]
        done = len(signers) <= limit
        digests = self.digests(signers[:limit], now_ms)
        return [(signer, digests[signer]) for signer in signers[:limit]], done

    def digests(self, signers: list[bytes], now_ms: int) -> dict[bytes, bytes]:
        """sync.signer_digest of each signer's live entries (an empty view digests too)."""
        found: dict[bytes, list[tuple[str, str, int]]] = {signer: [] for signer in signers}
        for signer in signers:
            rows = self._conn.execute(
                f"SELECT kind, key, seq FROM entries WHERE signer=:signer AND {LIVE}",
                {"signer": signer, "now": now_ms},
            )
            found[signer] = [(row[0], row[1], row[2]) for row in rows]
        return {signer: signer_digest(items) for signer, items in found.items()}

    def entries_page(
        self, signers: tuple[bytes, ...], after: Cursor | None, bytes_max: int, now_ms: int
    ) -> tuple[list[bytes], Cursor | None]:
        """Live messages of `signers` in (signer, kind, key) order after `after`, up to
        `bytes_max` bytes; and the cursor to resume from if the page filled up."""
        marks = ",".join(f":s{index}" for index in range(len(signers)))
        start = after or (b"", "", "")
        rows = self._conn.execute(
            f"SELECT signer, kind, key, wire FROM entries WHERE signer IN ({marks}) AND {LIVE} "
            "AND (signer, kind, key) > (:signer, :kind, :key) ORDER BY signer, kind, key",
            {f"s{index}": signer for index, signer in enumerate(signers)}
            | {"now": now_ms, "signer": start[0], "kind": start[1], "key": start[2]},
        )
        page: list[bytes] = []
        size = 0
        last: Cursor | None = None
        for row in rows:
            if len(row[3]) > bytes_max:
                continue  # stored under a larger size cap than the asker's: it cannot fit
            if size + len(row[3]) > bytes_max:
                return page, last
            page.append(row[3])
            size += len(row[3])
            last = (row[0], row[1], row[2])
        return page, None
