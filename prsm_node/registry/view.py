"""The registry view's index: which version of each entry this node holds, and merge rules.

Rules:
1. An entry is named by (kind, signer, key). A higher seq replaces a lower one; a lower
   seq is STALE; the same seq with the same body is a DUPLICATE; the same seq with another
   body is a CONFLICT, which only the signer can produce: first seen wins (as
   dht/records.py, rule 4).
2. An expired entry counts as absent: anything live replaces it.
3. Bounded: `entries_max` in all, `entries_per_signer_max` per signing key. Past a cap a
   new entry is refused (SIGNER_FULL, VIEW_FULL); replacing a held entry is always allowed.
   `expire` drops what has expired; the expiry heap is rebuilt when stale items pile up, so
   it stays within a constant factor of the entries held.
4. Pure: the time comes in as `now_ms`; the shell persists what `admit` accepted.

Theory of operation: the pubsub validator calls `admit` for every message, so the verdict
and the update happen in one synchronous step and two copies of one update arriving at
once cannot both be accepted.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter
from dataclasses import dataclass

from prsm_node.registry.messages import Entry, EntryId

HEAP_SLACK = 4
"""The expiry heap is rebuilt past HEAP_SLACK items per entry held (plus a constant)."""


class Verdict(enum.Enum):
    NEW = "new"
    NEWER = "newer"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"
    SIGNER_FULL = "signer_full"
    VIEW_FULL = "view_full"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.NEW, Verdict.NEWER)


@dataclass(frozen=True, slots=True)
class Version:
    seq: int
    expires_at_ms: int
    fingerprint: bytes

    @classmethod
    def of(cls, entry: Entry) -> Version:
        return cls(entry.seq, entry.expires_at_ms, entry.fingerprint)


class View:
    def __init__(self, *, entries_max: int, entries_per_signer_max: int) -> None:
        assert 0 < entries_per_signer_max <= entries_max
        self.entries_max = entries_max
        self.entries_per_signer_max = entries_per_signer_max
        self._versions: dict[EntryId, Version] = {}
        self._per_signer: Counter[bytes] = Counter()
        self._expiry: list[tuple[int, int, EntryId]] = []
        self._pushes = 0  # tie-breaker: EntryIds do not order

    def __len__(self) -> int:
        return len(self._versions)

    def version(self, entry_id: EntryId) -> Version | None:
        return self._versions.get(entry_id)

    def judge(self, entry: Entry, now_ms: int) -> Verdict:
        held = self._versions.get(entry.id)
        if held is not None and held.expires_at_ms > now_ms:
            if entry.seq < held.seq:
                return Verdict.STALE
            if entry.seq == held.seq:
                same = entry.fingerprint == held.fingerprint
                return Verdict.DUPLICATE if same else Verdict.CONFLICT
            return Verdict.NEWER
        if held is not None:
            return Verdict.NEWER  # the held one expired (rule 2)
        if self._per_signer[entry.signer] >= self.entries_per_signer_max:
            return Verdict.SIGNER_FULL
        if len(self._versions) >= self.entries_max:
            return Verdict.VIEW_FULL
        return Verdict.NEW

    def admit(self, entry: Entry, now_ms: int) -> Verdict:
        """Judge the entry and, if accepted, hold its version."""
        verdict = self.judge(entry, now_ms)
        if verdict.accepted:
            self.restore(entry.id, Version.of(entry))
        return verdict

    def restore(self, entry_id: EntryId, version: Version) -> None:
        """Hold a version (from `admit`, or read back from the store at start)."""
        if entry_id not in self._versions:
            self._per_signer[entry_id.signer] += 1
        self._versions[entry_id] = version
        self._pushes += 1
        heapq.heappush(self._expiry, (version.expires_at_ms, self._pushes, entry_id))
        if len(self._expiry) > HEAP_SLACK * len(self._versions) + 1024:
            self._rebuild_heap()
        assert len(self._versions) <= self.entries_max or entry_id in self._versions

    def expire(self, now_ms: int) -> list[EntryId]:
        """Forget every entry expired at `now_ms`; returns their ids."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now_ms:
            at_ms, _, entry_id = heapq.heappop(self._expiry)
            held = self._versions.get(entry_id)
            if held is not None and held.expires_at_ms == at_ms:
                del self._versions[entry_id]
                self._per_signer[entry_id.signer] -= 1
                if not self._per_signer[entry_id.signer]:
                    del self._per_signer[entry_id.signer]
                expired.append(entry_id)
        return expired

    def _rebuild_heap(self) -> None:
        self._expiry = [
            (version.expires_at_ms, index, entry_id)
            for index, (entry_id, version) in enumerate(self._versions.items())
        ]
        heapq.heapify(self._expiry)
        self._pushes = len(self._expiry)

    def signers(self) -> int:
        return len(self._per_signer)
