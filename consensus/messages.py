"""PBFT messages: bodies, ``prsm/pbft/2`` signed envelopes, the wire codec and its checks.

Rules:
1. Every body is a frozen, slotted, keyword-only dataclass. A signed message is
   ``Signed(body, signer, signature, encoded, epoch)`` with ``encoded = canonical([epoch,
   body.to_plain()])`` and ``signature = ed25519(validator[signer], b"prsm/pbft/2" ||
   encoded)``; ``signer`` is the replica index (position in the sorted validator keys of
   that epoch) and ``epoch`` names the configuration (``LedgerState.epoch``: the height
   after which that validator set took over). The epoch is signed, so a message of one
   configuration is never valid in another, and it is readable before any signature check,
   so a receiver drops another epoch's messages unverified (``replica_epochs.py``).
   Version 2 of the domain: version 1 signed the body alone.
2. On the wire a signed message is the msgpack array ``[encoded, signer, signature]``; the
   decoder checks the frame size first, then every field's type and range, and raises
   ``PeerProtocolError``; nested messages (view changes carry pre-prepares and prepares) are
   decoded by the same function, with a depth bound.
3. Nothing here verifies signatures: ``SignatureCache`` in ``replica.py`` does, once per
   (encoded, signature) digest.

The kinds follow Castro & Liskov (OSDI '99, section 4): PRE-PREPARE carries the whole block
(the request batch), PREPARE / COMMIT / CHECKPOINT carry digests, VIEW-CHANGE carries the
stable checkpoint's proof and a prepared certificate per prepared slot above it, NEW-VIEW
carries 2f+1 view changes and the re-issued pre-prepares. FORWARD relays client
transactions to the primary; STATE-REQUEST / STATE-REPLY transfer a checkpoint and later
blocks (each with its commit certificate) to a replica that is behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from consensus.codec import HASH_SIZE, SIGNATURE_SIZE, Signer, canonical, sha256, sign_bytes
from consensus.errors import PeerProtocolError
from consensus.ledger import Block

PBFT_DOMAIN = b"prsm/pbft/2"
EPOCH_MAX = 2**63 - 1  # a block height; msgpack's signed 64-bit range
FRAME_SIZE_MAX = 64 * 1024 * 1024
"""A state reply carries a snapshot plus blocks; the shell's frame cap (DESIGN.md) bounds it."""
NESTING_MAX = 3  # NEW-VIEW > VIEW-CHANGE > PRE-PREPARE


@dataclass(frozen=True, slots=True, kw_only=True)
class Signed:
    body: Any
    signer: int
    signature: bytes
    encoded: bytes
    epoch: int = 0

    def to_plain(self) -> list[Any]:
        return [self.encoded, self.signer, self.signature]

    def digest(self) -> bytes:
        """Identity of this exact signed message (the signature cache key)."""
        return sha256(self.encoded + self.signature)


def sign_message(body: Any, signer_index: int, signer: Signer, epoch: int = 0) -> Signed:
    encoded = canonical([epoch, body.to_plain()])
    return Signed(body=body, signer=signer_index, encoded=encoded, epoch=epoch,
                  signature=sign_bytes(signer, PBFT_DOMAIN, encoded))


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward:
    TAG: ClassVar[str] = "forward"
    txs: tuple[bytes, ...]

    def to_plain(self) -> list[Any]:
        return [self.TAG, list(self.txs)]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrePrepare:
    TAG: ClassVar[str] = "pre_prepare"
    view: int
    seq: int
    block: Block

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.view, self.seq, self.block.to_plain()]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    TAG: ClassVar[str] = "prepare"
    view: int
    seq: int
    digest: bytes

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.view, self.seq, self.digest]


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    TAG: ClassVar[str] = "commit"
    view: int
    seq: int
    digest: bytes

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.view, self.seq, self.digest]


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    TAG: ClassVar[str] = "checkpoint"
    seq: int
    digest: bytes
    """The hash of the block at ``seq`` (it binds the state root)."""

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.seq, self.digest]


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedProof:
    pre_prepare: Signed
    prepares: tuple[Signed, ...]

    def to_plain(self) -> list[Any]:
        return [self.pre_prepare.to_plain(), [p.to_plain() for p in self.prepares]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewChange:
    TAG: ClassVar[str] = "view_change"
    new_view: int
    stable_seq: int
    checkpoint_proof: tuple[Signed, ...]
    prepared: tuple[PreparedProof, ...]

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.new_view, self.stable_seq,
                [c.to_plain() for c in self.checkpoint_proof],
                [p.to_plain() for p in self.prepared]]


@dataclass(frozen=True, slots=True, kw_only=True)
class NewView:
    TAG: ClassVar[str] = "new_view"
    view: int
    view_changes: tuple[Signed, ...]
    pre_prepares: tuple[Signed, ...]

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.view, [v.to_plain() for v in self.view_changes],
                [p.to_plain() for p in self.pre_prepares]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRequest:
    TAG: ClassVar[str] = "state_request"
    height: int
    """The requester's executed height: it wants what comes after."""

    def to_plain(self) -> list[Any]:
        return [self.TAG, self.height]


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedBlock:
    block: Block
    certificate: tuple[Signed, ...]

    def to_plain(self) -> list[Any]:
        return [self.block.to_plain(), [c.to_plain() for c in self.certificate]]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateReply:
    TAG: ClassVar[str] = "state_reply"
    checkpoint_block: Block | None
    checkpoint_proof: tuple[Signed, ...]
    snapshot: Any
    """``LedgerState.snapshot()`` at ``checkpoint_block`` (None: blocks only)."""
    blocks: tuple[CertifiedBlock, ...]

    def to_plain(self) -> list[Any]:
        block = None if self.checkpoint_block is None else self.checkpoint_block.to_plain()
        return [self.TAG, block, [c.to_plain() for c in self.checkpoint_proof], self.snapshot,
                [b.to_plain() for b in self.blocks]]


BODY_TYPES = (Forward, PrePrepare, Prepare, Commit, Checkpoint, ViewChange, NewView,
              StateRequest, StateReply)


# -- decoding (peer input: every check raises ValueError, wrapped at the top) -------------


def _int(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


def _hash(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise ValueError("expected a 32-byte hash")
    return value


def _list(value: Any, size_max: int) -> tuple[Any, ...]:
    if type(value) is not tuple or len(value) > size_max:
        raise ValueError(f"expected a list of at most {size_max}")
    return value


def decode_signed(plain: Any, depth: int = 0) -> Signed:
    if depth > NESTING_MAX:
        raise ValueError("messages nested too deep")
    encoded, signer, signature = _list(plain, 3)
    if type(encoded) is not bytes or type(signature) is not bytes:
        raise ValueError("a signed message is [bytes, int, bytes]")
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError("a signature is 64 bytes")
    epoch, body_plain = _list(msgpack.unpackb(encoded, raw=False, use_list=False,
                                              strict_map_key=False), 2)
    if _int(epoch) > EPOCH_MAX:
        raise ValueError("epoch out of range")
    body = decode_body(body_plain, depth)
    if canonical([epoch, body.to_plain()]) != encoded:
        raise ValueError("the body encoding is not canonical")
    return Signed(body=body, signer=_int(signer), signature=signature, encoded=encoded,
                  epoch=epoch)


def _signed_list(value: Any, depth: int, size_max: int = 1024) -> tuple[Signed, ...]:
    return tuple(decode_signed(item, depth + 1) for item in _list(value, size_max))


def _certified(plain: Any, depth: int) -> CertifiedBlock:
    block, certificate = _list(plain, 2)
    return CertifiedBlock(block=Block.from_plain(block),
                          certificate=_signed_list(certificate, depth))


def decode_body(plain: Any, depth: int = 0) -> Any:
    items = _list(plain, 6)
    if not items:
        raise ValueError("empty message")
    tag, rest = items[0], items[1:]
    if tag == Forward.TAG:
        (txs,) = rest
        txs = _list(txs, 100_000)
        if not all(type(t) is bytes for t in txs):
            raise ValueError("forwarded transactions are bytes")
        return Forward(txs=txs)
    if tag == PrePrepare.TAG:
        view, seq, block = rest
        return PrePrepare(view=_int(view), seq=_int(seq), block=Block.from_plain(block))
    if tag in (Prepare.TAG, Commit.TAG):
        view, seq, digest = rest
        kind = Prepare if tag == Prepare.TAG else Commit
        return kind(view=_int(view), seq=_int(seq), digest=_hash(digest))
    if tag == Checkpoint.TAG:
        seq, digest = rest
        return Checkpoint(seq=_int(seq), digest=_hash(digest))
    if tag == ViewChange.TAG:
        new_view, stable_seq, proof, prepared = rest
        proofs = tuple(PreparedProof(pre_prepare=decode_signed(pp, depth + 1),
                                     prepares=_signed_list(ps, depth))
                       for pp, ps in (_list(p, 2) for p in _list(prepared, 4096)))
        return ViewChange(new_view=_int(new_view), stable_seq=_int(stable_seq),
                          checkpoint_proof=_signed_list(proof, depth), prepared=proofs)
    if tag == NewView.TAG:
        view, changes, pre_prepares = rest
        return NewView(view=_int(view), view_changes=_signed_list(changes, depth),
                       pre_prepares=_signed_list(pre_prepares, depth, 4096))
    if tag == StateRequest.TAG:
        (height,) = rest
        return StateRequest(height=_int(height))
    if tag == StateReply.TAG:
        block, proof, snapshot, blocks = rest
        return StateReply(checkpoint_block=None if block is None else Block.from_plain(block),
                          checkpoint_proof=_signed_list(proof, depth), snapshot=snapshot,
                          blocks=tuple(_certified(b, depth) for b in _list(blocks, 4096)))
    raise ValueError(f"unknown message kind {tag!r}")


def encode_frame(message: Signed) -> bytes:
    return msgpack.packb(message.to_plain(), use_bin_type=True)


def decode_frame(peer: int | bytes, frame: bytes, size_max: int = FRAME_SIZE_MAX) -> Signed:
    """Decode a frame from ``peer``; any defect is that peer's ``PeerProtocolError``."""
    if len(frame) > size_max:
        raise PeerProtocolError(peer, f"frame of {len(frame)} bytes > {size_max}")
    try:
        plain = msgpack.unpackb(frame, raw=False, use_list=False, strict_map_key=False)
        return decode_signed(plain)
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as error:
        raise PeerProtocolError(peer, f"malformed message: {error}") from error
