"""Wire messages of ``/prsm/blocks/1.0.0`` and the token bucket that paces them.

Rules:
1. Every message is a frozen, slotted, keyword-only dataclass checked when built; on the wire
   it is a msgpack array ``[kind, request_id, ...]`` inside the shell's length-prefixed
   frame (DESIGN.md, "Wire"). ``decode_message`` checks the frame size before unpacking and
   every field after, and raises only ``InvalidMessageError``.
2. A want-list names at most ``WANTS_PER_MESSAGE_MAX`` CIDs; a block reply carries exactly
   one block (at most ``BLOCK_SIZE_MAX`` bytes), so one frame never exceeds
   ``FRAME_SIZE_MAX`` and a slow block never holds others hostage in one giant frame.
3. The serving side answers a want-list with one ``BlockReply`` per block it has and one
   ``DontHave`` for the rest, at once (issue 5: "answered quickly with don't have").
4. ``TokenBucket`` is pure: ``now_ms`` comes in. It charges after the fact (a block's size
   is known only on arrival) and may go into debt; the caller waits until it is ``ready``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from storage.cid import Cid
from storage.dagpb import BLOCK_SIZE_MAX
from storage.errors import InvalidCidError, InvalidMessageError

PROTOCOL_ID = "/prsm/blocks/1.0.0"
WANTS_PER_MESSAGE_MAX = 64
"""CIDs per want-list: 64 x 1 MiB covers a generous pipeline; bitswap's default
``MaxOutstandingBytesPerPeer`` is 1 MiB-per-block x a few dozen blocks as well."""
FRAME_SIZE_MAX = BLOCK_SIZE_MAX + 1024
"""A block reply is its block plus ~60 bytes of envelope; 1 KiB of slack."""
REQUEST_ID_MAX = (1 << 63) - 1

_WANT, _BLOCK, _DONT_HAVE = "want", "block", "dont_have"


def _check_request_id(request_id: object) -> None:
    if type(request_id) is not int or not 0 <= request_id <= REQUEST_ID_MAX:
        raise InvalidMessageError("request_id must be an int in [0, 2^63)")


def _check_cids(cids: object) -> None:
    if not isinstance(cids, tuple) or not 1 <= len(cids) <= WANTS_PER_MESSAGE_MAX:
        raise InvalidMessageError(f"a CID list holds 1..{WANTS_PER_MESSAGE_MAX} CIDs")
    if not all(isinstance(cid, Cid) for cid in cids) or len(set(cids)) != len(cids):
        raise InvalidMessageError("a CID list holds distinct CIDs")


@dataclass(frozen=True, slots=True, kw_only=True)
class WantBlocks:
    request_id: int
    cids: tuple[Cid, ...]

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_cids(self.cids)


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockReply:
    request_id: int
    cid: Cid
    data: bytes

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        if not isinstance(self.cid, Cid) or not isinstance(self.data, bytes):
            raise InvalidMessageError("a block reply holds a CID and bytes")
        if len(self.data) > BLOCK_SIZE_MAX:
            raise InvalidMessageError(f"block of {len(self.data)} bytes > {BLOCK_SIZE_MAX}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DontHave:
    request_id: int
    cids: tuple[Cid, ...]

    def __post_init__(self) -> None:
        _check_request_id(self.request_id)
        _check_cids(self.cids)


Message = WantBlocks | BlockReply | DontHave


def encode_message(message: Message) -> bytes:
    if isinstance(message, BlockReply):
        body = [_BLOCK, message.request_id, message.cid.to_bytes(), message.data]
    else:
        kind = _WANT if isinstance(message, WantBlocks) else _DONT_HAVE
        body = [kind, message.request_id, [cid.to_bytes() for cid in message.cids]]
    data = msgpack.packb(body, use_bin_type=True)
    assert len(data) <= FRAME_SIZE_MAX
    return data


def _cid_list(items: object) -> tuple[Cid, ...]:
    if not isinstance(items, list) or not all(isinstance(item, bytes) for item in items):
        raise InvalidMessageError("a CID list must be a list of byte strings")
    return tuple(Cid.from_bytes(item) for item in items)


def decode_message(frame: bytes) -> Message:
    """Parse one frame (rule 1)."""
    if len(frame) > FRAME_SIZE_MAX:
        raise InvalidMessageError(f"frame of {len(frame)} bytes exceeds {FRAME_SIZE_MAX}")
    try:
        body = msgpack.unpackb(frame, raw=False, max_bin_len=BLOCK_SIZE_MAX, max_str_len=16,
                               max_array_len=WANTS_PER_MESSAGE_MAX, max_map_len=0,
                               max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, TypeError) as error:
        raise InvalidMessageError(f"not msgpack: {error}") from None
    if not isinstance(body, list) or len(body) < 3 or body[0] not in (_WANT, _BLOCK, _DONT_HAVE):
        raise InvalidMessageError("not a /prsm/blocks/1.0.0 message")
    try:
        if body[0] == _BLOCK:
            if len(body) != 4 or not isinstance(body[2], bytes):
                raise InvalidMessageError("a block reply is [kind, id, cid, data]")
            return BlockReply(request_id=body[1], cid=Cid.from_bytes(body[2]), data=body[3])
        if len(body) != 3:
            raise InvalidMessageError("a CID list message is [kind, id, cids]")
        kind = WantBlocks if body[0] == _WANT else DontHave
        return kind(request_id=body[1], cids=_cid_list(body[2]))
    except InvalidCidError as error:
        raise InvalidMessageError(f"bad CID: {error}") from None


def answer_want(want: WantBlocks, get_block: Callable[[Cid], bytes | None]) -> list[Message]:
    """The serving side's reply to a want-list (rule 3); ``get_block`` returns None if absent."""
    replies: list[Message] = []
    missing: list[Cid] = []
    for cid in want.cids:
        data = get_block(cid)
        if data is None:
            missing.append(cid)
        else:
            replies.append(BlockReply(request_id=want.request_id, cid=cid, data=data))
    if missing:
        replies.append(DontHave(request_id=want.request_id, cids=tuple(missing)))
    return replies


@dataclass(slots=True)
class TokenBucket:
    """Bytes per second with a burst; tokens in milli-bytes so integer time adds up exactly."""

    rate_bytes_per_s: int
    burst_bytes: int
    _tokens_milli: int = 0
    _updated_ms: int | None = None

    def __post_init__(self) -> None:
        assert self.rate_bytes_per_s > 0 and self.burst_bytes > 0
        self._tokens_milli = self.burst_bytes * 1000

    def _refill(self, now_ms: int) -> None:
        if self._updated_ms is not None:
            assert now_ms >= self._updated_ms, "time went backwards"
            gained = (now_ms - self._updated_ms) * self.rate_bytes_per_s
            self._tokens_milli = min(self.burst_bytes * 1000, self._tokens_milli + gained)
        self._updated_ms = now_ms

    def charge(self, now_ms: int, size_bytes: int) -> None:
        self._refill(now_ms)
        self._tokens_milli -= size_bytes * 1000

    def ready(self, now_ms: int) -> bool:
        self._refill(now_ms)
        return self._tokens_milli >= 0

    def ready_at_ms(self, now_ms: int) -> int:
        """The first time at which ``ready`` holds (``now_ms`` if it does now)."""
        self._refill(now_ms)
        if self._tokens_milli >= 0:
            return now_ms
        return now_ms - (self._tokens_milli // self.rate_bytes_per_s)  # ceil of the debt
