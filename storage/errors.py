"""Typed errors of the storage layer, by whose fault they are (STYLE.md, house rule 5).

Rules:
1. ``PeerProtocolError`` is a peer's fault: it names the peer and a short stable ``reason``
   tag. The exchange session returns it inside a ``DropPeer`` effect; it never raises it.
2. ``InvalidDataError`` and its subclasses say that bytes (from a peer, a CAR file, the
   disk) are malformed, oversized or do not match their CID. Decoders raise them; whoever
   knows where the bytes came from decides whose fault it is (a peer's: wrap into
   ``PeerProtocolError``; the operator's file: report it).
3. ``LocalCommandError`` and its subclasses are the caller's fault (bad argument, a block
   that is not there, a full store); the control API maps them to user-facing errors.
4. Any other exception (AssertionError, KeyError, ...) is our bug and must crash.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class for the storage layer's typed errors."""


class PeerProtocolError(StorageError):
    """A peer sent something malformed, unasked for, or a block that fails its CID."""

    def __init__(self, peer: bytes, reason: str) -> None:
        super().__init__(f"peer {peer.hex()[:16]}: {reason}")
        self.peer = peer
        self.reason = reason


class InvalidDataError(StorageError):
    """Bytes that do not decode, exceed a cap, or break a format rule."""

    reason = "invalid_data"


class InvalidCidError(InvalidDataError):
    reason = "invalid_cid"


class UnsupportedCidError(InvalidCidError):
    """A well-formed CID we do not handle (CIDv0, another codec or hash function)."""

    reason = "unsupported_cid"


class CorruptBlockError(InvalidDataError):
    """Block bytes whose sha2-256 is not the digest in their CID."""

    reason = "hash_mismatch"

    def __init__(self, cid: object, detail: str = "block does not match its CID") -> None:
        super().__init__(f"{cid}: {detail}")
        self.cid = cid


class InvalidDagError(InvalidDataError):
    """A dag-pb node or UnixFS message that is malformed or inconsistent with its links."""

    reason = "invalid_dag"


class InvalidCarError(InvalidDataError):
    reason = "invalid_car"


class InvalidManifestError(InvalidDataError):
    reason = "invalid_manifest"


class InvalidMessageError(InvalidDataError):
    """A ``/prsm/blocks/1.0.0`` frame that does not decode or breaks a cap."""

    reason = "invalid_message"


class LocalCommandError(StorageError):
    """The caller asked for something that cannot be done."""


class BlockNotFoundError(LocalCommandError):
    def __init__(self, cid: object) -> None:
        super().__init__(f"block not found: {cid}")
        self.cid = cid


class QuotaExceededError(LocalCommandError):
    """The store cannot hold the block even after collecting every unpinned block."""


class SessionStateError(StorageError):
    """An input arrived in a session state that has no transition for it (our bug)."""
