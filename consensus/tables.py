"""Copy-on-write building blocks of the ledger state: a Merkle-rooted table and a timer queue.

Rules:
1. Immutable successors (as ``LedgerState``): ``successor()`` shares storage with its
   parent and copies it on the first write, so a table no block touches costs O(1) per
   block and a parent never sees its successor's writes.
2. ``MerkleTable`` keeps its keys sorted and a leaf hash per record (``merkle.leaf_hash`` of
   the caller's canonical encoding); its root is recomputed only after a write, and
   ``changed`` lists the keys written or deleted since the successor was made (what the
   store writes for a block).
3. ``TimerQueue`` is a sorted list of ``(time_ms, key)``; ``due(now_ms, limit)`` returns the
   earliest entries at or before ``now_ms`` in (time, key) order: a deterministic order that
   never depends on dict iteration.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from consensus import merkle

Key = TypeVar("Key", bytes, str)
Record = TypeVar("Record")


class MerkleTable(Generic[Key, Record]):
    """Sorted ``key -> record`` with cached leaf hashes and root; see the module rules."""

    __slots__ = ("_encode", "_items", "_keys", "_leaves", "_owned", "_root", "changed")

    def __init__(self, encode: Callable[[Key, Record], bytes],
                 items: dict[Key, Record] | None = None) -> None:
        self._encode = encode
        self._items: dict[Key, Record] = dict(items or {})
        self._keys: list[Key] = sorted(self._items)
        self._leaves = {k: merkle.leaf_hash(encode(k, v)) for k, v in self._items.items()}
        self._owned = True
        self._root: bytes | None = None
        self.changed: set[Key] = set(self._items)

    def successor(self) -> MerkleTable[Key, Record]:
        new = object.__new__(MerkleTable)
        new._encode, new._items, new._keys = self._encode, self._items, self._keys
        new._leaves, new._root = self._leaves, self._root
        new._owned = False
        new.changed = set()
        return new

    def _own(self) -> None:
        if not self._owned:
            self._items, self._keys = dict(self._items), list(self._keys)
            self._leaves = dict(self._leaves)
            self._owned = True
        self._root = None

    def get(self, key: Key) -> Record | None:
        return self._items.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Key]:
        """The sorted keys (do not modify the list)."""
        return self._keys

    def items(self) -> Iterator[tuple[Key, Record]]:
        """Records in key order."""
        return ((k, self._items[k]) for k in self._keys)

    def put(self, key: Key, record: Record) -> None:
        self._own()
        if key not in self._items:
            bisect.insort(self._keys, key)
        self._items[key] = record
        self._leaves[key] = merkle.leaf_hash(self._encode(key, record))
        self.changed.add(key)

    def delete(self, key: Key) -> None:
        self._own()
        del self._items[key], self._leaves[key]
        index = bisect.bisect_left(self._keys, key)
        assert self._keys[index] == key
        del self._keys[index]
        self.changed.add(key)

    def root(self) -> bytes:
        if self._root is None:
            self._root = merkle.root_of_hashes([self._leaves[k] for k in self._keys])
        return self._root

    def prove(self, key: Key) -> tuple[tuple[bytes, bool], ...] | None:
        """Audit path of ``key``'s leaf in ``root()``; None when absent."""
        if key not in self._items:
            return None
        hashes = [self._leaves[k] for k in self._keys]
        return merkle.prove(hashes, bisect.bisect_left(self._keys, key))


class TimerQueue:
    """Sorted ``(time_ms, key)`` entries; see the module rules."""

    __slots__ = ("_entries", "_owned")

    def __init__(self, entries: list[tuple[int, bytes]] | None = None) -> None:
        self._entries = sorted(entries or [])
        self._owned = True

    def successor(self) -> TimerQueue:
        new = object.__new__(TimerQueue)
        new._entries, new._owned = self._entries, False
        return new

    def _own(self) -> None:
        if not self._owned:
            self._entries, self._owned = list(self._entries), True

    def __len__(self) -> int:
        return len(self._entries)

    def first_ms(self) -> int | None:
        return self._entries[0][0] if self._entries else None

    def add(self, time_ms: int, key: bytes) -> None:
        self._own()
        bisect.insort(self._entries, (time_ms, key))

    def remove(self, time_ms: int, key: bytes) -> None:
        self._own()
        index = bisect.bisect_left(self._entries, (time_ms, key))
        assert self._entries[index] == (time_ms, key), "removing a timer that is not set"
        del self._entries[index]

    def due(self, now_ms: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` earliest entries with ``time_ms <= now_ms`` (not removed)."""
        found = []
        for entry in self._entries:
            if entry[0] > now_ms or len(found) == limit:
                break
            found.append(entry)
        return found
