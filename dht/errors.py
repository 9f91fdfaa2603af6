"""Typed errors of the DHT core, by whose fault they are (STYLE.md, house rule 5).

Rules:
1. ``PeerProtocolError`` is the only error a peer's input can cause. The node core catches
   it at its one receive path, counts it in ``statistics()`` and scores the peer; it never
   escapes ``DhtNode.handle``.
2. ``RecordError`` and its subclasses say why a record was refused (forged, stale, too
   large, over quota, unknown namespace). When the record came from a peer, the node wraps
   it into a ``PeerProtocolError`` for that peer.
3. ``LocalCommandError`` is the caller's fault (the shell or the operator); it is returned
   as a failed command result, never raised past ``handle``.
4. Any other exception (AssertionError, KeyError, ...) is our bug and must crash.
"""

from __future__ import annotations


class DhtError(Exception):
    """Base class for the DHT's typed errors."""


class PeerProtocolError(DhtError):
    """A peer sent something malformed, forged or out of protocol."""

    def __init__(self, peer: bytes, reason: str) -> None:
        super().__init__(f"peer {peer.hex()[:16]}: {reason}")
        self.peer = peer
        self.reason = reason


class RecordError(DhtError):
    """A record was refused; ``reason`` is a short stable tag for statistics."""

    reason = "invalid_record"


class InvalidRecordError(RecordError):
    reason = "invalid_record"


class ForgedRecordError(RecordError):
    reason = "bad_signature"


class UnknownNamespaceError(RecordError):
    reason = "unknown_namespace"


class StaleRecordError(RecordError):
    reason = "stale_record"


class RecordTooLargeError(RecordError):
    reason = "record_too_large"


class RecordExpiredError(RecordError):
    reason = "record_expired"


class QuotaExceededError(RecordError):
    reason = "quota_exceeded"


class StoreFullError(RecordError):
    reason = "store_full"


class LookupStateError(DhtError):
    """An input arrived in a lookup state that has no transition for it (our bug)."""


class SnapshotError(DhtError):
    """A persisted routing-table snapshot is corrupt or from another node."""


class LocalCommandError(DhtError):
    """A local command cannot be carried out (bad argument, too many lookups)."""
