"""Kademlia routing table: 256 k-buckets by common-prefix length, with a replacement cache.

Rules:
1. Return, don't do. The table never pings anyone: when a full bucket sees a new peer, ``add``
   returns the bucket's least-recently-seen entry for the caller to ping, and parks the new
   peer as the bucket's pending candidate (Kademlia paper §2.2: "the recipient pings the
   least-recently seen node ... if it fails to respond, it is evicted and the new sender
   inserted at the tail; otherwise ... the new sender's contact is discarded").
   The caller reports back with ``ping_answered`` or ``ping_failed``.
2. Everything is bounded: at most ``bucket_size`` entries and ``replacements_max``
   candidates per bucket, at most 256 buckets, at most one eviction ping per bucket.
3. No clock, no global randomness: ``now_ms`` and a ``random.Random`` are passed in.

Invariants (asserted):
- a bucket never holds more than ``bucket_size`` entries;
- every entry in bucket i has common-prefix length i with our own key;
- a peer is never both an entry and a replacement candidate; we never hold ourselves.

Theory of operation. Entries in a bucket are kept in an ``OrderedDict`` from least recently
seen (head) to most recently seen (tail). Candidates that do not fit wait in a bounded
replacement cache (Kademlia paper §4.1), most recent at the tail; when an entry is removed
(failed eviction ping, or ``failures_max`` consecutive failed requests) the most recent
candidate is promoted. Removing on one failed request would empty tables under message loss,
so lookups only count failures (§4.1 "stale" contacts); eviction pings remove at once.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from dht.errors import SnapshotError
from dht.keys import KEY_BITS, common_prefix_length, key_from_bytes, random_key_in_bucket
from dht.peer import PeerInfo

BUCKET_SIZE = 20
"""k: entries per bucket and replication factor (libp2p Kademlia spec: k = 20)."""

REPLACEMENTS_MAX = 10
"""Replacement candidates per bucket (paper §4.1 keeps a cache; hivemind leaves it unbounded,
which we avoid). Half a bucket is enough to refill it after a burst of churn."""

FAILURES_MAX = 3
"""Consecutive failed requests before an entry is dropped (paper §4.1 stale contacts)."""

SNAPSHOT_VERSION = 1
SNAPSHOT_PEERS_MAX = KEY_BITS * BUCKET_SIZE


class AddStatus(enum.Enum):
    SELF = "self"
    ADDED = "added"
    UPDATED = "updated"
    PENDING = "pending"  # bucket full; parked as a candidate


@dataclass(frozen=True, slots=True, kw_only=True)
class AddOutcome:
    """What ``add`` did, and whom (if anyone) the caller must ping now."""

    status: AddStatus
    ping: PeerInfo | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingStatistics:
    peers_total: int
    buckets_nonempty: int
    bucket_occupancy: tuple[tuple[int, int], ...]  # (bucket index, entries), non-empty only
    replacements_total: int
    pings_pending: int


class _Entry:
    __slots__ = ("failures", "last_seen_ms", "peer")

    def __init__(self, peer: PeerInfo, last_seen_ms: int) -> None:
        self.peer = peer
        self.last_seen_ms = last_seen_ms
        self.failures = 0


class _Bucket:
    __slots__ = ("candidate", "entries", "pinging", "replacements")

    def __init__(self) -> None:
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.replacements: OrderedDict[bytes, PeerInfo] = OrderedDict()
        self.pinging: bytes | None = None
        self.candidate: bytes | None = None


class RoutingTable:
    """k-buckets around ``own_id``; see the module header for the rules."""

    def __init__(
        self,
        own_id: bytes,
        *,
        bucket_size: int = BUCKET_SIZE,
        replacements_max: int = REPLACEMENTS_MAX,
        failures_max: int = FAILURES_MAX,
        created_ms: int = 0,
    ) -> None:
        if bucket_size < 1 or replacements_max < 0 or failures_max < 1:
            raise ValueError("bucket_size and failures_max must be >= 1")
        self.own = PeerInfo(peer_id=own_id)
        self.own_key = self.own.key
        self.bucket_size = bucket_size
        self.replacements_max = replacements_max
        self.failures_max = failures_max
        self._created_ms = created_ms
        self._buckets: dict[int, _Bucket] = {}
        self._refreshed_ms: dict[int, int] = {}
        self._size = 0
        self.changed = False  # set on membership change; the node clears it after persisting

    # -- membership ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    def __contains__(self, peer_id: bytes) -> bool:
        return self._find(peer_id) is not None

    def peers(self) -> Iterator[PeerInfo]:
        for index in sorted(self._buckets):
            for entry in self._buckets[index].entries.values():
                yield entry.peer

    def get(self, peer_id: bytes) -> PeerInfo | None:
        entry = self._find(peer_id)
        return entry.peer if entry is not None else None

    def add(self, peer: PeerInfo, now_ms: int) -> AddOutcome:
        """Record that ``peer`` was seen alive (it sent us a valid message)."""
        if peer.key == self.own_key:
            return AddOutcome(status=AddStatus.SELF)
        index = common_prefix_length(self.own_key, peer.key)
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket()
        entry = bucket.entries.get(peer.peer_id)
        if entry is not None:
            entry.last_seen_ms = now_ms
            entry.failures = 0
            if peer.addrs and peer.addrs != entry.peer.addrs:
                entry.peer = peer
            bucket.entries.move_to_end(peer.peer_id)
            return AddOutcome(status=AddStatus.UPDATED)
        if len(bucket.entries) < self.bucket_size:
            bucket.replacements.pop(peer.peer_id, None)
            bucket.entries[peer.peer_id] = _Entry(peer, now_ms)
            self._size += 1
            self.changed = True
            self._check_bucket(bucket)
            return AddOutcome(status=AddStatus.ADDED)
        self._park(bucket, peer)
        if bucket.pinging is not None:
            return AddOutcome(status=AddStatus.PENDING)
        oldest = next(iter(bucket.entries.values()))
        bucket.pinging = oldest.peer.peer_id
        bucket.candidate = peer.peer_id
        return AddOutcome(status=AddStatus.PENDING, ping=oldest.peer)

    def ping_answered(self, peer_id: bytes, now_ms: int) -> None:
        """The eviction ping was answered: keep the entry (now most recent), drop the candidate."""
        bucket = self._bucket_of(peer_id)
        if bucket is None or bucket.pinging != peer_id:
            return
        bucket.pinging = None
        if bucket.candidate is not None:
            bucket.replacements.pop(bucket.candidate, None)
            bucket.candidate = None
        entry = bucket.entries.get(peer_id)
        if entry is not None:
            entry.last_seen_ms = now_ms
            entry.failures = 0
            bucket.entries.move_to_end(peer_id)

    def ping_failed(self, peer_id: bytes) -> PeerInfo | None:
        """The eviction ping failed: evict the entry and promote the most recent candidate."""
        return self.remove(peer_id)

    def record_failure(self, peer_id: bytes) -> PeerInfo | None:
        """A request to ``peer_id`` failed; drop it after ``failures_max`` in a row.

        Returns the promoted replacement, if the entry was dropped and one was waiting.
        """
        entry = self._find(peer_id)
        if entry is None:
            return None
        entry.failures += 1
        if entry.failures < self.failures_max:
            return None
        return self.remove(peer_id)

    def remove(self, peer_id: bytes) -> PeerInfo | None:
        """Remove an entry; returns the replacement candidate promoted in its place."""
        bucket = self._bucket_of(peer_id)
        if bucket is None:
            return None
        if bucket.replacements.pop(peer_id, None) is not None:
            return None
        if bucket.entries.pop(peer_id, None) is None:
            return None
        self._size -= 1
        self.changed = True
        if bucket.pinging == peer_id:
            bucket.pinging = None
            bucket.candidate = None
        if not bucket.replacements:
            return None
        candidate_id, candidate = bucket.replacements.popitem(last=True)
        bucket.entries[candidate_id] = _Entry(candidate, 0)
        bucket.entries.move_to_end(candidate_id)
        self._size += 1
        return candidate

    # -- queries ---------------------------------------------------------------------------

    def closest(self, key: int, count: int) -> list[PeerInfo]:
        """The ``count`` entries closest to ``key`` by XOR distance, closest first.

        Walks buckets in distance order instead of sorting the whole table: with c the
        common prefix of ``key`` and our key, bucket c holds the closest peers, then all
        buckets above c (their distance has top bit c), then buckets c-1, c-2, ... 0, each
        strictly farther than the one before.
        """
        cpl = common_prefix_length(self.own_key, key)
        result: list[PeerInfo] = []

        def distance_to_key(peer: PeerInfo) -> int:
            return peer.key ^ key

        bucket = self._buckets.get(cpl)
        if bucket is not None:
            result.extend(sorted((e.peer for e in bucket.entries.values()), key=distance_to_key))
        if len(result) < count:
            above = [
                e.peer
                for index, b in self._buckets.items()
                if index > cpl
                for e in b.entries.values()
            ]
            result.extend(sorted(above, key=distance_to_key))
        for index in range(min(cpl, KEY_BITS) - 1, -1, -1):
            if len(result) >= count:
                break
            bucket = self._buckets.get(index)
            if bucket is not None:
                peers = (e.peer for e in bucket.entries.values())
                result.extend(sorted(peers, key=distance_to_key))
        return result[:count]

    def mark_refreshed(self, key: int, now_ms: int) -> None:
        """A lookup for ``key`` ran: its bucket counts as fresh (paper §2.3)."""
        cpl = common_prefix_length(self.own_key, key)
        if cpl < KEY_BITS:
            self._refreshed_ms[cpl] = now_ms

    def refresh_keys(
        self, now_ms: int, idle_ms: int, rng: random.Random, count_max: int
    ) -> list[int]:
        """Random keys in buckets with no lookup for ``idle_ms``, marked refreshed.

        Covers buckets 0 .. (highest non-empty + 1), as libp2p refreshes up to the table's
        largest common prefix length; deeper buckets are empty in any realistic network.
        """
        top = max(self._buckets, default=-1) + 1
        keys: list[int] = []
        for index in range(min(top + 1, KEY_BITS)):
            if len(keys) >= count_max:
                break
            if now_ms - self._refreshed_ms.get(index, self._created_ms) >= idle_ms:
                keys.append(random_key_in_bucket(self.own_key, index, rng))
                self._refreshed_ms[index] = now_ms
        return keys

    def statistics(self) -> RoutingStatistics:
        occupancy = tuple(
            (index, len(bucket.entries))
            for index, bucket in sorted(self._buckets.items())
            if bucket.entries
        )
        return RoutingStatistics(
            peers_total=self._size,
            buckets_nonempty=len(occupancy),
            bucket_occupancy=occupancy,
            replacements_total=sum(len(b.replacements) for b in self._buckets.values()),
            pings_pending=sum(1 for b in self._buckets.values() if b.pinging is not None),
        )

    def check_invariants(self) -> None:
        """Assert the module invariants over the whole table (tests and debug builds)."""
        total = 0
        for index, bucket in self._buckets.items():
            assert len(bucket.entries) <= self.bucket_size
            assert len(bucket.replacements) <= self.replacements_max
            for peer_id, entry in bucket.entries.items():
                assert entry.peer.peer_id == peer_id
                assert common_prefix_length(self.own_key, entry.peer.key) == index
                assert peer_id not in bucket.replacements
            total += len(bucket.entries)
        assert total == self._size

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, object]:
        """Plain msgpack-able data; entries in bucket order, least recently seen first."""
        peers = [
            [entry.peer.peer_id, list(entry.peer.addrs), entry.last_seen_ms]
            for index in sorted(self._buckets)
            for entry in self._buckets[index].entries.values()
        ]
        return {"version": SNAPSHOT_VERSION, "own_id": self.own.peer_id, "peers": peers}

    @classmethod
    def from_snapshot(cls, data: object, own_id: bytes, **params: int) -> RoutingTable:
        """Rebuild a table persisted by ``snapshot``; SnapshotError if corrupt or foreign."""
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
            raise SnapshotError("not a routing table snapshot of a known version")
        if data.get("own_id") != own_id:
            raise SnapshotError("snapshot belongs to another node id")
        peers = data.get("peers")
        if not isinstance(peers, list) or len(peers) > SNAPSHOT_PEERS_MAX:
            raise SnapshotError("snapshot peers missing or too many")
        table = cls(own_id, **params)
        for item in peers:
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
                raise SnapshotError("malformed snapshot entry")
            peer_id, addrs, last_seen_ms = item
            if not isinstance(peer_id, bytes) or not isinstance(addrs, list):
                raise SnapshotError("malformed snapshot entry")
            try:
                peer = PeerInfo(peer_id=peer_id, addrs=tuple(addrs))
            except ValueError as error:
                raise SnapshotError(f"bad peer in snapshot: {error}") from error
            table._restore(peer, last_seen_ms)
        table.changed = False
        return table

    # -- internals -------------------------------------------------------------------------

    def _restore(self, peer: PeerInfo, last_seen_ms: int) -> None:
        """Insert a persisted entry at the tail; extras beyond k (a larger old k) are dropped."""
        if peer.key == self.own_key:
            return
        index = common_prefix_length(self.own_key, peer.key)
        bucket = self._buckets.setdefault(index, _Bucket())
        if peer.peer_id in bucket.entries or len(bucket.entries) >= self.bucket_size:
            return
        bucket.entries[peer.peer_id] = _Entry(peer, last_seen_ms)
        self._size += 1
        self._check_bucket(bucket)

    def _bucket_of(self, peer_id: bytes) -> _Bucket | None:
        peer_key = key_from_bytes(peer_id)
        if peer_key == self.own_key:
            return None
        return self._buckets.get(common_prefix_length(self.own_key, peer_key))

    def _find(self, peer_id: bytes) -> _Entry | None:
        bucket = self._bucket_of(peer_id)
        return bucket.entries.get(peer_id) if bucket is not None else None

    def _park(self, bucket: _Bucket, peer: PeerInfo) -> None:
        if self.replacements_max == 0:
            return
        bucket.replacements[peer.peer_id] = peer
        bucket.replacements.move_to_end(peer.peer_id)
        while len(bucket.replacements) > self.replacements_max:
            bucket.replacements.popitem(last=False)  # drop the least recently seen candidate

    def _check_bucket(self, bucket: _Bucket) -> None:
        assert len(bucket.entries) <= self.bucket_size
        assert self._size >= len(bucket.entries)
