"""Registry messages: the signed objects gossiped on the registry topics and served by sync.

Rules:
1. A message is canonical msgpack of ``{"body": {...}, "signer": 32-byte Ed25519 key,
   "sig": ed25519(signer, domain || canonical(body))}`` (DESIGN.md, "Signed objects"), one
   domain tag per kind (``prsm/registry-model/1``, ``prsm/registry-capability/1``,
   ``prsm/registry-offer/1``): a signature for one kind is valid for no other kind, and for
   no transaction or DHT record.
2. Every body carries ``kind``, ``key`` (the entry's name within its signer and kind),
   ``seq`` (per publisher, increasing), ``issued_at_ms``, ``expires_at_ms`` and ``peer_id``,
   which must be the signer's own peer id: every claim about a node is signed by that
   node. The other fields are fixed per kind (``SCHEMAS``); an unknown, missing or mistyped
   field refuses the message. No floats anywhere (consensus.codec refuses them).
3. Checks run cheapest first: size (before decoding), shape, schema, time window, then
   the Ed25519 verification, and only then "expired by less than the skew" (so a forged
   message cannot pass for an honest late one).
4. Errors say whose fault it is. ``fault=True`` (malformed, forged, oversized, from the
   future, living too long, expired longer ago than the clock skew allowed) means the peer
   that handed us the message broke the protocol: an honest peer validates before it
   relays. ``fault=False`` (expired within the skew) can be clock skew between honest nodes.
5. Pure: the time comes in as ``now_ms``; no I/O, no trio, no libp2p.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import base58
import msgpack

from consensus.codec import Signer, canonical, sign_bytes, verify_bytes
from storage.cid import Cid
from storage.errors import InvalidCidError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEQ_MAX = 2**63 - 1
TIME_MAX_MS = 2**62
FINGERPRINT_SIZE = 16

ED25519_PEER_ID_PREFIX = bytes((0x00, 0x24, 0x08, 0x01, 0x12, 0x20))
"""libp2p peer id of an Ed25519 key: identity multihash (0x00, 36 bytes) of the protobuf
PublicKey {Type: Ed25519 (1), Data: 32 bytes}; base58btc gives the ``12D3KooW...`` form."""


class Kind(enum.Enum):
    MODEL = "model"
    CAPABILITY = "capability"
    OFFER = "offer"

    @property
    def domain(self) -> bytes:
        return f"prsm/registry-{self.value}/1".encode()

    @property
    def topic(self) -> str:
        """The GossipSub topic this kind travels on."""
        return f"/prsm/registry/{self.value}/1.0.0"


KIND_OF_TOPIC = {kind.topic: kind for kind in Kind}
KIND_OF_VALUE = {kind.value: kind for kind in Kind}
CAPABILITY_KEY = "node"
"""A node has one capability entry; its key is fixed."""


# -- errors -------------------------------------------------------------------------------


class RegistryMessageError(Exception):
    """A message was refused. ``reason`` is a short stable code for counters and logs."""

    reason = "invalid"
    fault = True

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")


class OversizedMessage(RegistryMessageError):
    reason = "oversized"


class MalformedMessage(RegistryMessageError):
    reason = "malformed"


class ForgedMessage(RegistryMessageError):
    reason = "forged"


class WrongTopicMessage(RegistryMessageError):
    reason = "wrong_topic"


class FutureMessage(RegistryMessageError):
    reason = "from_future"


class ExpiredMessage(RegistryMessageError):
    """Expired by less than the allowed clock skew: an honest relay's clock may be behind."""

    reason = "expired"
    fault = False


class LongExpiredMessage(RegistryMessageError):
    """Expired by more than the allowed skew: no honest relay hands this on."""

    reason = "long_expired"


# -- field checks -------------------------------------------------------------------------

Check = Callable[[Any], bool]
BASE58_ALPHABET = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def _text(low: int, high: int) -> Check:
    return lambda value: type(value) is str and low <= len(value) <= high


def _integer(low: int, high: int) -> Check:
    return lambda value: type(value) is int and low <= value <= high


def _boolean(value: Any) -> bool:
    return type(value) is bool


def _list(item: Check, count_max: int) -> Check:
    def check(value: Any) -> bool:
        return (
            type(value) is list
            and len(value) <= count_max
            and all(item(element) for element in value)
            and len({canonical(element) for element in value}) == len(value)
        )

    return check


def _record(fields: Mapping[str, Check]) -> Check:
    return lambda value: (
        type(value) is dict
        and set(value) == set(fields)
        and all(check(value[name]) for name, check in fields.items())
    )


def _mapping(key: Check, item: Check, count_max: int) -> Check:
    return lambda value: (
        type(value) is dict
        and len(value) <= count_max
        and all(key(name) and item(element) for name, element in value.items())
    )


def is_cid(value: Any) -> bool:
    if type(value) is not str:
        return False
    try:
        Cid.parse(value)
    except InvalidCidError:
        return False
    return True


def _optional_cid(value: Any) -> bool:
    return value == "" or is_cid(value)


def _base_units(value: Any) -> bool:
    """An amount in FTNS base units as a decimal string: 10^18 per FTNS overflows msgpack's
    64-bit integers (consensus.codec encodes amounts as bytes for the same reason)."""
    return type(value) is str and 0 < len(value) <= 40 and value.isascii() and value.isdigit()


def _name(value: Any) -> bool:
    return _text(1, 128)(value) and value.isprintable()


_TAG = _text(1, 64)
_GPU = _record({"name": _text(1, 128), "memory_bytes": _integer(0, 2**50)})

COMMON_FIELDS: dict[str, Check] = {
    "kind": _text(1, 16),
    "key": _text(0, 128),
    "seq": _integer(1, SEQ_MAX),
    "issued_at_ms": _integer(0, TIME_MAX_MS),
    "expires_at_ms": _integer(0, TIME_MAX_MS),
    "peer_id": lambda value: _text(1, 64)(value) and set(value) <= BASE58_ALPHABET,
}

SCHEMAS: dict[Kind, dict[str, Check]] = {
    Kind.MODEL: {
        "name": _name,
        "architecture": _text(1, 64),
        "tags": _list(_TAG, 32),
        "manifest_cid": is_cid,
        "size_bytes": _integer(0, 2**62),
        "description": _text(0, 1024),
    },
    Kind.CAPABILITY: {
        "cpu_cores": _integer(0, 65_536),
        "memory_bytes": _integer(0, 2**56),
        "gpus": _list(_GPU, 16),
        "storage_free_bytes": _integer(0, 2**62),
        "models": _list(is_cid, 256),
        "job_kinds": _list(_text(1, 64), 16),
        "price_hints": _mapping(_text(1, 64), _base_units, 16),
        "addrs": _list(_text(1, 256), 8),
        "version": _text(0, 32),
    },
    Kind.OFFER: {
        "job_kind": _text(1, 64),
        "model_cid": is_cid,
        "input_cid": _optional_cid,
        "price_units": _base_units,
        "deadline_ms": _integer(0, TIME_MAX_MS),
        "gpu_required": _boolean,
        "memory_bytes_min": _integer(0, 2**56),
    },
}
"""Per kind, the fields besides COMMON_FIELDS. The key is the manifest CID for a model,
CAPABILITY_KEY for capabilities, and the offer id for an offer."""


def _key_problem(kind: Kind, body: Mapping[str, Any]) -> str | None:
    key = body["key"]
    if kind is Kind.MODEL and key != body["manifest_cid"]:
        return "a model's key is its manifest_cid"
    if kind is Kind.CAPABILITY and key != CAPABILITY_KEY:
        return f"a capability's key is {CAPABILITY_KEY!r}"
    if kind is Kind.OFFER and not key:
        return "an offer needs an id as its key"
    return None


def schema_problem(body: Any) -> str | None:
    """Why ``body`` does not fit its kind's schema, or None."""
    if type(body) is not dict:
        return "body is not a map"
    kind = KIND_OF_VALUE.get(body.get("kind"))  # type: ignore[arg-type]
    if kind is None:
        return "unknown kind"
    fields = COMMON_FIELDS | SCHEMAS[kind]
    if set(body) != set(fields):
        missing = sorted(set(fields) - set(body))
        extra = sorted(map(str, set(body) - set(fields)))
        return f"fields missing {missing[:3]} or unexpected {extra[:3]}"
    for name, check in fields.items():
        if not check(body[name]):
            return f"field {name} out of schema"
    if body["expires_at_ms"] <= body["issued_at_ms"]:
        return "expires before it is issued"
    return _key_problem(kind, body)


# -- entries ------------------------------------------------------------------------------


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58) of an Ed25519 public key."""
    assert len(public_key) == PUBLIC_KEY_SIZE
    return base58.b58encode(ED25519_PEER_ID_PREFIX + public_key).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What a receiver accepts; the node builds it from the [registry] config."""

    message_size_max: int = 16 * 1024
    ttl_max_ms: int = 48 * 3600 * 1000
    clock_skew_max_ms: int = 30_000


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryId:
    kind: Kind
    signer: bytes
    key: str


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Entry:
    """A verified message. ``body`` is read-only by convention (it came off the wire or
    was signed by us); ``wire`` is the exact signed object, re-served as is by sync."""

    kind: Kind
    signer: bytes
    body: dict[str, Any]
    wire: bytes
    fingerprint: bytes  # sha256 of the canonical body: tells duplicates from conflicts

    @property
    def id(self) -> EntryId:
        return EntryId(kind=self.kind, signer=self.signer, key=self.body["key"])

    @property
    def seq(self) -> int:
        return int(self.body["seq"])

    @property
    def expires_at_ms(self) -> int:
        return int(self.body["expires_at_ms"])

    @property
    def peer_id(self) -> str:
        return str(self.body["peer_id"])


def _fingerprint(body_bytes: bytes) -> bytes:
    return hashlib.sha256(body_bytes).digest()[:FINGERPRINT_SIZE]


def sign_entry(kind: Kind, body: dict[str, Any], signer: Signer) -> Entry:
    """Sign a body we publish; it must fit the schema (our bug otherwise)."""
    body = dict(body, kind=kind.value, peer_id=peer_id_of(signer.public_key))
    problem = schema_problem(body)
    assert problem is None, problem
    body_bytes = canonical(body)
    sig = sign_bytes(signer, kind.domain, body_bytes)
    wire = canonical({"body": body, "signer": signer.public_key, "sig": sig})
    return Entry(
        kind=kind,
        signer=signer.public_key,
        body=body,
        wire=wire,
        fingerprint=_fingerprint(body_bytes),
    )


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        # ExtraData, FormatError, StackError and non-str map keys all land here
        raise MalformedMessage(f"not msgpack: {type(error).__name__}") from None


def _envelope(obj: Any) -> tuple[dict[str, Any], bytes, bytes]:
    if type(obj) is not dict or set(obj) != {"body", "signer", "sig"}:
        raise MalformedMessage("not a map of body, signer and sig")
    body, signer, sig = obj["body"], obj["signer"], obj["sig"]
    if type(signer) is not bytes or len(signer) != PUBLIC_KEY_SIZE:
        raise MalformedMessage("signer is not a 32-byte Ed25519 key")
    if type(sig) is not bytes or len(sig) != SIGNATURE_SIZE:
        raise MalformedMessage("unsigned: sig is not a 64-byte signature")
    problem = schema_problem(body)
    if problem:
        raise MalformedMessage(problem)
    return body, signer, sig


def _check_window(body: Mapping[str, Any], limits: Limits, now_ms: int) -> None:
    if body["issued_at_ms"] > now_ms + limits.clock_skew_max_ms:
        raise FutureMessage("issued ahead of our clock by more than the allowed skew")
    if body["expires_at_ms"] > now_ms + limits.ttl_max_ms:
        raise FutureMessage("expires further ahead than registry.ttl_max_ms")
    if body["expires_at_ms"] <= now_ms - limits.clock_skew_max_ms:
        raise LongExpiredMessage("expired longer ago than the allowed skew")


def _check_expiry(body: Mapping[str, Any], now_ms: int) -> None:
    if body["expires_at_ms"] <= now_ms:
        raise ExpiredMessage("already expired")


def decode_entry(data: bytes, *, limits: Limits, now_ms: int, kind: Kind | None = None) -> Entry:
    """Check and verify one message from a peer; ``kind`` is the topic's kind (None: any,
    as in a sync answer). Raises a RegistryMessageError subclass."""
    if len(data) > limits.message_size_max:
        raise OversizedMessage(f"{len(data)} bytes > {limits.message_size_max}")
    body, signer, sig = _envelope(_unpack(data))
    entry_kind = KIND_OF_VALUE[body["kind"]]
    if kind is not None and entry_kind is not kind:
        raise WrongTopicMessage(f"a {entry_kind.value} message on the {kind.value} topic")
    if body["peer_id"] != peer_id_of(signer):
        raise ForgedMessage("peer_id is not the signer's own peer id")
    _check_window(body, limits, now_ms)
    body_bytes = canonical(body)
    if not verify_bytes(signer, entry_kind.domain, body_bytes, sig):
        raise ForgedMessage("signature does not verify")
    _check_expiry(body, now_ms)  # after the signature: a forged expired message is a fault
    return Entry(
        kind=entry_kind, signer=signer, body=body, wire=data, fingerprint=_fingerprint(body_bytes)
    )
