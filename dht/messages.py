"""DHT wire messages for ``/prsm/kad/1.0.0``: frozen dataclasses and a checked msgpack codec.

Rules:
1. One decode path: ``decode_frame(peer, frame)`` turns bytes into a ``Request`` or a
   ``Response`` or raises ``PeerProtocolError(peer, reason)``. No other exception type may
   escape it, whatever the bytes (a hypothesis test feeds it arbitrary bytes and dicts).
2. Sizes are checked before work: the frame size first, then every list and byte string.
3. Messages are validated when built (as h11's events are), so a message object in memory
   is always well formed, whether it came from the wire or from our own code.
4. ``find_node`` carries a 32-byte keyspace point (``target``), not a preimage: bucket
   refresh looks up random points, which have no known preimage. ``get_value``,
   ``put_value``, ``add_provider`` and ``get_providers`` carry the record/content key
   bytes, which the responder hashes (libp2p Kademlia spec, "Keyspace").

Wire format (msgpack maps; ``id`` pairs a response with its request on a long-lived stream):
    request:  {"v": 1, "type": "req", "id": u64, "kind": KIND, "key": bytes,
               "record": RECORD (put_value only), "provider": PEER (add_provider only)}
    response: {"v": 1, "type": "resp", "id": u64, "kind": KIND, "closer": [PEER, ...],
               "record": RECORD (get_value, optional), "providers": [PEER, ...]
               (get_providers), "error": str (optional: refused put/provide)}
    PEER = [peer_id bytes, [multiaddr str, ...]];  RECORD: see dht/records.py.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgpack

from dht.errors import PeerProtocolError, RecordError
from dht.peer import PeerInfo
from dht.records import KEY_SIZE_MAX, SignedRecord, record_from_wire

WIRE_VERSION = 1

FRAME_SIZE_MAX = 128 * 1024
"""Bytes per frame: a 10 KiB record plus 20 closer peers and 20 providers at their maximum
address sizes fits; go-libp2p-kad-dht allows 4 MiB, which we have no use for."""

PEERS_PER_MESSAGE_MAX = 20
"""Closer peers or providers per response: k (libp2p Kademlia spec returns k closest)."""

ERROR_SIZE_MAX = 200
REQUEST_ID_MAX = 2**64 - 1
TARGET_SIZE = 32


class MessageKind(enum.Enum):
    PING = "ping"
    FIND_NODE = "find_node"
    GET_VALUE = "get_value"
    PUT_VALUE = "put_value"
    ADD_PROVIDER = "add_provider"
    GET_PROVIDERS = "get_providers"


_KEYED = {MessageKind.GET_VALUE, MessageKind.PUT_VALUE, MessageKind.ADD_PROVIDER,
          MessageKind.GET_PROVIDERS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    request_id: int
    kind: MessageKind
    key: bytes = b""
    record: SignedRecord | None = None
    provider: PeerInfo | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.request_id <= REQUEST_ID_MAX:
            raise ValueError("request id out of range")
        if self.kind is MessageKind.PING and self.key:
            raise ValueError("ping carries no key")
        if self.kind is MessageKind.FIND_NODE and len(self.key) != TARGET_SIZE:
            raise ValueError("find_node target must be 32 bytes")
        if self.kind in _KEYED and not 0 < len(self.key) <= KEY_SIZE_MAX:
            raise ValueError("key size out of range")
        if (self.record is not None) != (self.kind is MessageKind.PUT_VALUE):
            raise ValueError("a record comes with put_value only")
        if self.record is not None and self.record.body.key != self.key:
            raise ValueError("put_value key differs from the record's key")
        if (self.provider is not None) != (self.kind is MessageKind.ADD_PROVIDER):
            raise ValueError("a provider comes with add_provider only")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    request_id: int
    kind: MessageKind
    closer: tuple[PeerInfo, ...] = ()
    record: SignedRecord | None = None
    providers: tuple[PeerInfo, ...] = ()
    error: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.request_id <= REQUEST_ID_MAX:
            raise ValueError("request id out of range")
        if len(self.closer) > PEERS_PER_MESSAGE_MAX:
            raise ValueError("too many closer peers")
        if len(self.providers) > PEERS_PER_MESSAGE_MAX:
            raise ValueError("too many providers")
        if self.record is not None and self.kind is not MessageKind.GET_VALUE:
            raise ValueError("a record comes with get_value responses only")
        if self.providers and self.kind is not MessageKind.GET_PROVIDERS:
            raise ValueError("providers come with get_providers responses only")
        if self.error is not None and len(self.error) > ERROR_SIZE_MAX:
            raise ValueError("error text too long")


Message = Request | Response


def message_to_wire(message: Message) -> dict[str, object]:
    if isinstance(message, Request):
        wire: dict[str, object] = {"v": WIRE_VERSION, "type": "req", "id": message.request_id,
                                   "kind": message.kind.value, "key": message.key}
        if message.record is not None:
            wire["record"] = message.record.to_wire()
        if message.provider is not None:
            wire["provider"] = message.provider.to_wire()
        return wire
    wire = {"v": WIRE_VERSION, "type": "resp", "id": message.request_id,
            "kind": message.kind.value, "closer": [peer.to_wire() for peer in message.closer]}
    if message.record is not None:
        wire["record"] = message.record.to_wire()
    if message.providers:
        wire["providers"] = [peer.to_wire() for peer in message.providers]
    if message.error is not None:
        wire["error"] = message.error
    return wire


def encode_message(message: Message) -> bytes:
    return msgpack.packb(message_to_wire(message), use_bin_type=True)


def decode_frame(peer: bytes, frame: bytes, frame_size_max: int = FRAME_SIZE_MAX) -> Message:
    """Bytes from ``peer`` -> message; PeerProtocolError for anything malformed."""
    if len(frame) > frame_size_max:
        raise PeerProtocolError(peer, "frame too large")
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise PeerProtocolError(peer, f"not msgpack: {type(error).__name__}") from error
    return message_from_wire(peer, obj)


def message_from_wire(peer: bytes, obj: object) -> Message:
    """Decoded msgpack from ``peer`` -> message; PeerProtocolError when malformed."""
    if not isinstance(obj, dict):
        raise PeerProtocolError(peer, "message is not a map")
    if obj.get("v") != WIRE_VERSION:
        raise PeerProtocolError(peer, "unknown wire version")
    request_id = obj.get("id")
    if not isinstance(request_id, int) or isinstance(request_id, bool):
        raise PeerProtocolError(peer, "id must be an integer")
    try:
        kind = MessageKind(obj.get("kind"))
    except ValueError:
        raise PeerProtocolError(peer, "unknown message kind") from None
    try:
        if obj.get("type") == "req":
            return _request_from_wire(obj, request_id, kind)
        if obj.get("type") == "resp":
            return _response_from_wire(obj, request_id, kind)
    except RecordError as error:
        raise PeerProtocolError(peer, f"bad record: {error}") from error
    except (ValueError, TypeError) as error:
        raise PeerProtocolError(peer, f"bad field: {error}") from error
    raise PeerProtocolError(peer, "type must be req or resp")


def _request_from_wire(obj: dict[str, object], request_id: int, kind: MessageKind) -> Request:
    allowed = {"v", "type", "id", "kind", "key", "record", "provider"}
    if not set(obj) <= allowed:
        raise ValueError("unexpected request fields")
    key = obj.get("key", b"")
    if not isinstance(key, bytes):
        raise ValueError("key must be bytes")
    record = record_from_wire(obj["record"]) if "record" in obj else None
    provider = _peer_from_wire(obj["provider"]) if "provider" in obj else None
    return Request(request_id=request_id, kind=kind, key=key, record=record, provider=provider)


def _response_from_wire(obj: dict[str, object], request_id: int,
                        kind: MessageKind) -> Response:
    allowed = {"v", "type", "id", "kind", "closer", "record", "providers", "error"}
    if not set(obj) <= allowed:
        raise ValueError("unexpected response fields")
    closer = _peers_from_wire(obj.get("closer", []))
    providers = _peers_from_wire(obj.get("providers", []))
    record = record_from_wire(obj["record"]) if "record" in obj else None
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise ValueError("error must be a string")
    return Response(request_id=request_id, kind=kind, closer=closer, record=record,
                    providers=providers, error=error)


def _peers_from_wire(items: object) -> tuple[PeerInfo, ...]:
    if not isinstance(items, list) or len(items) > PEERS_PER_MESSAGE_MAX:
        raise ValueError("peer list missing or too long")
    return tuple(_peer_from_wire(item) for item in items)


def _peer_from_wire(item: object) -> PeerInfo:
    if not isinstance(item, list) or len(item) != 2:
        raise ValueError("peer must be [peer_id, [addr, ...]]")
    peer_id, addrs = item
    if not isinstance(peer_id, bytes) or not isinstance(addrs, list):
        raise ValueError("peer must be [peer_id, [addr, ...]]")
    return PeerInfo(peer_id=peer_id, addrs=tuple(addrs))
