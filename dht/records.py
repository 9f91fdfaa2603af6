"""Signed DHT records, namespace validation, the record and provider stores, republishing.

Rules:
1. A record on the wire is ``{"body": {...}, "signer": pubkey, "sig": sig}`` where
   ``sig = ed25519(signer, b"prsm/record/1" || canonical(body))`` (DESIGN.md, "Signed
   objects"). The domain tag makes a record signature useless for any other object kind.
2. ``canonical`` is msgpack with map keys sorted and no floats anywhere, so every node
   computes the same bytes for the same body (floats are rejected, not rounded).
3. Every key lives in a namespace, its first path segment: ``/pk/<hex pubkey>`` must be
   signed by that key; ``/registry/<hex pubkey>/<name>`` must be signed by that key and its
   value must pass a schema callable. Unknown namespaces are rejected (libp2p's record
   validator does the same). Since a key names its signer, one key has one possible signer.
4. Versions are ordered by ``(seq, expires_at_ms)``: a higher version replaces a lower one;
   a lower one is a ``StaleRecordError``; an equal version with other content is stale too
   (first seen wins). Republishing keeps ``seq`` and extends ``expires_at_ms``.
5. Every store is bounded; eviction and refusal rules are written next to each cap.
6. No clock: ``now_ms`` is passed in. Signing keys are held by the caller (``RecordSigner``).

Theory of operation. ``RecordValidator.validate`` does the checks cheapest first (shape, size,
namespace, expiry window, then the signature) and remembers verified signatures in a
bounded cache, because a popular record reaches a node many times (DESIGN.md: ~10k Ed25519
verifies/s per core).
"""

from __future__ import annotations

import enum
import hashlib
import heapq
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from dht.errors import (
    ForgedRecordError,
    InvalidRecordError,
    LocalCommandError,
    QuotaExceededError,
    RecordExpiredError,
    RecordTooLargeError,
    StaleRecordError,
    StoreFullError,
    UnknownNamespaceError,
)
from dht.keys import key_from_bytes
from dht.peer import PeerInfo

RECORD_DOMAIN = b"prsm/record/1"

KEY_SIZE_MAX = 256
"""Bytes per record key; libp2p keys (``/pk/<multihash>``, ``/ipns/<cid>``) are < 100."""

RECORD_SIZE_MAX = 10 * 1024
"""Bytes per encoded record: boxo's IPNS ``MaxRecordSize`` is 10 KiB; small records keep a
PUT_VALUE in one frame and make a full store cheap to scan."""

RECORD_TTL_MS = 36 * 3600 * 1000
"""Default record lifetime. go-libp2p-kad-dht keeps records 36 h (``MaxRecordAge``)."""

RECORD_TTL_MAX_MS = 48 * 3600 * 1000
"""A record expiring later than now + this is refused: no record lives forever."""

PROVIDER_TTL_MS = 24 * 3600 * 1000
"""Provider record lifetime (issue 3: 24 h default; the Kademlia paper's 24 h expiry)."""

RECORDS_PER_SIGNER_MAX = 64
RECORD_STORE_BYTES_MAX = 64 * 1024 * 1024
RECORDS_MAX = 65_536
PROVIDERS_PER_KEY_MAX = 20
PROVIDER_KEYS_PER_PEER_MAX = 256
PROVIDER_RECORDS_MAX = 100_000
VERIFIED_CACHE_MAX = 4096
REPUBLISH_ENTRIES_MAX = 4096

PUBKEY_SIZE = 32
SIGNATURE_SIZE = 64


# -- canonical encoding -------------------------------------------------------------------


def _canonical(obj: object, depth: int) -> object:
    if depth > 16:
        raise InvalidRecordError("nesting too deep")
    if isinstance(obj, bool | int | bytes | str) or obj is None:
        return obj
    if isinstance(obj, float):
        raise InvalidRecordError("floats are not allowed in signed payloads")
    if isinstance(obj, list | tuple):
        return [_canonical(item, depth + 1) for item in obj]
    if isinstance(obj, dict):
        if not all(isinstance(key, str) for key in obj):
            raise InvalidRecordError("map keys must be strings")
        return {key: _canonical(obj[key], depth + 1) for key in sorted(obj)}
    raise InvalidRecordError(f"type not allowed in signed payloads: {type(obj).__name__}")


def canonical_encode(obj: object) -> bytes:
    """msgpack with sorted map keys and no floats: one byte string per value."""
    return msgpack.packb(_canonical(obj, 0), use_bin_type=True)


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordBody:
    key: bytes
    value: bytes
    seq: int
    expires_at_ms: int
    publisher: bytes  # peer id of the node that published it (informational; not trusted)

    def to_wire(self) -> dict[str, object]:
        return {
            "key": self.key,
            "value": self.value,
            "seq": self.seq,
            "expires_at_ms": self.expires_at_ms,
            "publisher": self.publisher,
        }

    @property
    def version(self) -> tuple[int, int]:
        return (self.seq, self.expires_at_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedRecord:
    body: RecordBody
    signer: bytes
    sig: bytes

    def to_wire(self) -> dict[str, object]:
        return {"body": self.body.to_wire(), "signer": self.signer, "sig": self.sig}

    def encoded_size(self) -> int:
        return len(canonical_encode(self.to_wire()))


_BODY_FIELDS = {"key": bytes, "value": bytes, "seq": int, "expires_at_ms": int,
                "publisher": bytes}


def record_from_wire(obj: object) -> SignedRecord:
    """Build a record from decoded msgpack; InvalidRecordError on any shape problem."""
    if not isinstance(obj, dict) or set(obj) != {"body", "signer", "sig"}:
        raise InvalidRecordError("record must be a map with body, signer, sig")
    body, signer, sig = obj["body"], obj["signer"], obj["sig"]
    if not isinstance(signer, bytes) or len(signer) != PUBKEY_SIZE:
        raise InvalidRecordError("signer must be a 32-byte Ed25519 public key")
    if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
        raise InvalidRecordError("sig must be a 64-byte Ed25519 signature")
    if not isinstance(body, dict) or set(body) != set(_BODY_FIELDS):
        raise InvalidRecordError("body fields missing or unexpected")
    for name, kind in _BODY_FIELDS.items():
        value = body[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise InvalidRecordError(f"body field {name} must be {kind.__name__}")
    if not 0 <= body["seq"] < 2**63 or not 0 <= body["expires_at_ms"] < 2**63:
        raise InvalidRecordError("seq and expires_at_ms must be non-negative int64")
    if not 0 < len(body["key"]) <= KEY_SIZE_MAX or len(body["publisher"]) > 64:
        raise InvalidRecordError("key or publisher size out of range")
    return SignedRecord(body=RecordBody(**body), signer=signer, sig=sig)


class RecordSigner(Protocol):
    """What the core needs from an identity to re-sign its own records on republish."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class Ed25519Signer:
    """A ``RecordSigner`` over a pynacl key (Ed25519 signing is deterministic: no RNG)."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


def sign_record(body: RecordBody, signer: RecordSigner) -> SignedRecord:
    sig = signer.sign(RECORD_DOMAIN + canonical_encode(body.to_wire()))
    return SignedRecord(body=body, signer=signer.public_key, sig=sig)


def pk_key(public_key: bytes) -> bytes:
    return b"/pk/" + public_key.hex().encode()


def registry_key(public_key: bytes, name: str) -> bytes:
    return b"/registry/" + public_key.hex().encode() + b"/" + name.encode()


# -- validation ---------------------------------------------------------------------------

Schema = Callable[[bytes, bytes], None]
"""(key, value) -> None, raising InvalidRecordError when the value does not fit the schema."""


def default_registry_schema(key: bytes, value: bytes) -> None:
    """A registry value is a msgpack map with string keys and no floats."""
    try:
        decoded = msgpack.unpackb(value, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise InvalidRecordError("registry value is not msgpack") from error
    if not isinstance(decoded, dict):
        raise InvalidRecordError("registry value must be a map")
    _canonical(decoded, 0)


def _signer_in_key(segment: bytes) -> bytes:
    try:
        public_key = bytes.fromhex(segment.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidRecordError("key does not name a hex public key") from error
    if len(public_key) != PUBKEY_SIZE:
        raise InvalidRecordError("key does not name a 32-byte public key")
    return public_key


def namespace_of(key: bytes) -> bytes:
    """``/pk/abc`` -> ``/pk/``; UnknownNamespaceError when the key has no namespace."""
    end = key.find(b"/", 1)
    if not key.startswith(b"/") or end < 2:
        raise UnknownNamespaceError("key has no /namespace/ prefix")
    return key[: end + 1]


class RecordValidator:
    """Checks records: shape, size, namespace, expiry window, signature (cached)."""

    def __init__(
        self,
        *,
        registry_schema: Schema = default_registry_schema,
        record_size_max: int = RECORD_SIZE_MAX,
        ttl_max_ms: int = RECORD_TTL_MAX_MS,
        verified_max: int = VERIFIED_CACHE_MAX,
    ) -> None:
        self.registry_schema = registry_schema
        self.record_size_max = record_size_max
        self.ttl_max_ms = ttl_max_ms
        self.verified_max = verified_max
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def validate(self, record: SignedRecord, now_ms: int) -> int:
        """Raise a RecordError subclass or return the record's encoded size."""
        size = record.encoded_size()
        if size > self.record_size_max:
            raise RecordTooLargeError(f"record is {size} bytes, max {self.record_size_max}")
        body = record.body
        namespace = namespace_of(body.key)
        if namespace == b"/pk/":
            if _signer_in_key(body.key[4:]) != record.signer:
                raise InvalidRecordError("/pk/ record not signed by the key it names")
        elif namespace == b"/registry/":
            rest = body.key[len(namespace):]
            slash = rest.find(b"/")
            if slash < 0 or slash == len(rest) - 1:
                raise InvalidRecordError("registry key must be /registry/<hex key>/<name>")
            if _signer_in_key(rest[:slash]) != record.signer:
                raise InvalidRecordError("/registry/ record not signed by the key it names")
            self.registry_schema(body.key, body.value)
        else:
            raise UnknownNamespaceError(f"unknown namespace {namespace!r}")
        if body.expires_at_ms <= now_ms:
            raise RecordExpiredError("record already expired")
        if body.expires_at_ms > now_ms + self.ttl_max_ms:
            raise InvalidRecordError("record expiry too far in the future")
        self._verify_signature(record)
        return size

    def _verify_signature(self, record: SignedRecord) -> None:
        message = RECORD_DOMAIN + canonical_encode(record.body.to_wire())
        digest = hashlib.sha256(record.signer + record.sig + message).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return
        try:
            VerifyKey(record.signer).verify(message, record.sig)
        except (BadSignatureError, ValueError) as error:
            raise ForgedRecordError("signature does not verify") from error
        self._verified[digest] = None
        if len(self._verified) > self.verified_max:
            self._verified.popitem(last=False)


# -- record store -------------------------------------------------------------------------


class PutOutcome(enum.Enum):
    STORED = "stored"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatistics:
    records: int
    bytes_total: int
    expired_total: int
    evicted_total: int
    providers: int
    provider_keys: int
    providers_expired_total: int


class _Stored:
    __slots__ = ("distance", "record", "size")

    def __init__(self, record: SignedRecord, size: int, distance: int) -> None:
        self.record = record
        self.size = size
        self.distance = distance


class RecordStore:
    """Validated records, bounded by count, bytes, and records per signer.

    Eviction rule when full: drop the record whose key is farthest from our own key, but
    only if it is farther than the incoming one; otherwise refuse the incoming record
    (StoreFullError). A node is responsible for keys near it (paper §2.3: pairs are stored
    at the k closest nodes), so far records are the ones other nodes are likelier to hold.
    """

    def __init__(
        self,
        own_key: int,
        *,
        store_bytes_max: int = RECORD_STORE_BYTES_MAX,
        records_max: int = RECORDS_MAX,
        records_per_signer_max: int = RECORDS_PER_SIGNER_MAX,
    ) -> None:
        self.own_key = own_key
        self.store_bytes_max = store_bytes_max
        self.records_max = records_max
        self.records_per_signer_max = records_per_signer_max
        self._records: dict[bytes, _Stored] = {}
        self._by_distance: list[tuple[int, bytes]] = []
        self._expiry: list[tuple[int, bytes]] = []
        self._per_signer: dict[bytes, int] = {}
        self.bytes_total = 0
        self.expired_total = 0
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: bytes, now_ms: int) -> SignedRecord | None:
        stored = self._records.get(key)
        if stored is None or stored.record.body.expires_at_ms <= now_ms:
            return None
        return stored.record

    def put(self, record: SignedRecord, size: int) -> PutOutcome:
        """Store a record already checked by ``RecordValidator`` (``size`` from it)."""
        key = record.body.key
        current = self._records.get(key)
        if current is not None:
            if record.body.version < current.record.body.version:
                raise StaleRecordError("a newer version of this record is stored")
            if record.body.version == current.record.body.version:
                if record == current.record:
                    return PutOutcome.UNCHANGED
                raise StaleRecordError("same version with other content")
            self._drop(key)
            self._insert(record, size)
            return PutOutcome.REPLACED
        if self._per_signer.get(record.signer, 0) >= self.records_per_signer_max:
            raise QuotaExceededError("too many records from this signer")
        self._make_room(key_from_bytes(key) ^ self.own_key, size)
        self._insert(record, size)
        return PutOutcome.STORED

    def expire(self, now_ms: int, count_max: int) -> int:
        """Drop up to ``count_max`` expired records (lazy heap; stale heap entries skipped)."""
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now_ms and dropped < count_max:
            expires_at_ms, key = heapq.heappop(self._expiry)
            stored = self._records.get(key)
            if stored is not None and stored.record.body.expires_at_ms == expires_at_ms:
                self._drop(key)
                self.expired_total += 1
                dropped += 1
        if len(self._expiry) > 2 * len(self._records) + 64:
            self._expiry = [(s.record.body.expires_at_ms, k) for k, s in self._records.items()]
            heapq.heapify(self._expiry)
        return dropped

    def _make_room(self, distance: int, size: int) -> None:
        while (self.bytes_total + size > self.store_bytes_max
               or len(self._records) + 1 > self.records_max):
            if not self._by_distance or self._by_distance[-1][0] <= distance:
                raise StoreFullError("store full of records closer to us than this one")
            _, farthest = self._by_distance[-1]
            self._drop(farthest)
            self.evicted_total += 1

    def _insert(self, record: SignedRecord, size: int) -> None:
        key = record.body.key
        distance = key_from_bytes(key) ^ self.own_key
        self._records[key] = _Stored(record, size, distance)
        insort(self._by_distance, (distance, key))
        heapq.heappush(self._expiry, (record.body.expires_at_ms, key))
        self._per_signer[record.signer] = self._per_signer.get(record.signer, 0) + 1
        self.bytes_total += size
        assert self.bytes_total <= self.store_bytes_max or len(self._records) == 1

    def _drop(self, key: bytes) -> None:
        stored = self._records.pop(key)
        index = bisect_left(self._by_distance, (stored.distance, key))
        assert self._by_distance[index] == (stored.distance, key)
        del self._by_distance[index]
        signer = stored.record.signer
        self._per_signer[signer] -= 1
        if self._per_signer[signer] == 0:
            del self._per_signer[signer]
        self.bytes_total -= stored.size
        assert self.bytes_total >= 0


# -- provider store -----------------------------------------------------------------------


class ProviderStore:
    """Who provides which key, with expiry and three caps against floods.

    Caps: ``providers_per_key_max`` (a full key evicts its entry expiring soonest: the least
    recently refreshed, so a provider that republishes keeps its place), a provider may hold
    at most ``keys_per_provider_max`` keys here (excess refused: one peer cannot flood us),
    and ``records_max`` in total (excess refused).
    """

    def __init__(
        self,
        *,
        ttl_ms: int = PROVIDER_TTL_MS,
        providers_per_key_max: int = PROVIDERS_PER_KEY_MAX,
        keys_per_provider_max: int = PROVIDER_KEYS_PER_PEER_MAX,
        records_max: int = PROVIDER_RECORDS_MAX,
    ) -> None:
        self.ttl_ms = ttl_ms
        self.providers_per_key_max = providers_per_key_max
        self.keys_per_provider_max = keys_per_provider_max
        self.records_max = records_max
        self._by_key: dict[bytes, dict[bytes, tuple[PeerInfo, int]]] = {}
        self._per_provider: dict[bytes, int] = {}
        self._expiry: list[tuple[int, bytes, bytes]] = []
        self.count = 0
        self.expired_total = 0

    def add(self, key: bytes, provider: PeerInfo, now_ms: int) -> None:
        expires_at_ms = now_ms + self.ttl_ms
        providers = self._by_key.get(key)
        if providers is not None and provider.peer_id in providers:
            providers[provider.peer_id] = (provider, expires_at_ms)
            heapq.heappush(self._expiry, (expires_at_ms, key, provider.peer_id))
            return
        if self._per_provider.get(provider.peer_id, 0) >= self.keys_per_provider_max:
            raise QuotaExceededError("provider announces too many keys")
        if providers is not None and len(providers) >= self.providers_per_key_max:
            soonest = min(providers, key=lambda peer_id: providers[peer_id][1])
            self._remove(key, soonest)
        if self.count >= self.records_max:
            raise StoreFullError("provider store full")
        self._by_key.setdefault(key, {})[provider.peer_id] = (provider, expires_at_ms)
        self._per_provider[provider.peer_id] = self._per_provider.get(provider.peer_id, 0) + 1
        self.count += 1
        heapq.heappush(self._expiry, (expires_at_ms, key, provider.peer_id))
        assert len(self._by_key[key]) <= self.providers_per_key_max

    def get(self, key: bytes, now_ms: int, count_max: int) -> list[PeerInfo]:
        providers = self._by_key.get(key, {})
        live = [peer for peer, expires_at_ms in providers.values() if expires_at_ms > now_ms]
        return live[:count_max]

    def keys(self) -> int:
        return len(self._by_key)

    def expire(self, now_ms: int, count_max: int) -> int:
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now_ms and dropped < count_max:
            expires_at_ms, key, peer_id = heapq.heappop(self._expiry)
            entry = self._by_key.get(key, {}).get(peer_id)
            if entry is not None and entry[1] == expires_at_ms:
                self._remove(key, peer_id)
                self.expired_total += 1
                dropped += 1
        if len(self._expiry) > 2 * self.count + 64:
            self._expiry = [(expires, key, peer_id)
                            for key, providers in self._by_key.items()
                            for peer_id, (_, expires) in providers.items()]
            heapq.heapify(self._expiry)
        return dropped

    def _remove(self, key: bytes, peer_id: bytes) -> None:
        providers = self._by_key[key]
        del providers[peer_id]
        if not providers:
            del self._by_key[key]
        self._per_provider[peer_id] -= 1
        if self._per_provider[peer_id] == 0:
            del self._per_provider[peer_id]
        self.count -= 1
        assert self.count >= 0


# -- republishing -------------------------------------------------------------------------


class RepublishKind(enum.Enum):
    RECORD = "record"
    PROVIDER = "provider"


@dataclass(frozen=True, slots=True, kw_only=True)
class RepublishItem:
    kind: RepublishKind
    key: bytes
    record: SignedRecord | None


class Republisher:
    """What this node originally published, and when each item is next due.

    Only the original publisher republishes (libp2p practice; the paper's hourly
    replication by every holder costs O(records x k) messages per hour). Bounded by
    ``entries_max``: tracking more is refused as a LocalCommandError.
    """

    def __init__(self, *, record_interval_ms: int, provider_interval_ms: int,
                 entries_max: int = REPUBLISH_ENTRIES_MAX) -> None:
        self.record_interval_ms = record_interval_ms
        self.provider_interval_ms = provider_interval_ms
        self.entries_max = entries_max
        self._items: dict[tuple[RepublishKind, bytes], tuple[RepublishItem, int]] = {}
        self._due: list[tuple[int, str, bytes]] = []

    def __len__(self) -> int:
        return len(self._items)

    def track(self, item: RepublishItem, now_ms: int) -> None:
        ident = (item.kind, item.key)
        if ident not in self._items and len(self._items) >= self.entries_max:
            raise LocalCommandError("too many items to republish")
        interval = (self.record_interval_ms if item.kind is RepublishKind.RECORD
                    else self.provider_interval_ms)
        due_ms = now_ms + interval
        self._items[ident] = (item, due_ms)
        heapq.heappush(self._due, (due_ms, item.kind.value, item.key))

    def untrack(self, kind: RepublishKind, key: bytes) -> None:
        self._items.pop((kind, key), None)

    def due(self, now_ms: int, count_max: int) -> list[RepublishItem]:
        """Items due now; the caller re-tracks each after republishing it."""
        result: list[RepublishItem] = []
        while self._due and self._due[0][0] <= now_ms and len(result) < count_max:
            due_ms, kind_value, key = heapq.heappop(self._due)
            ident = (RepublishKind(kind_value), key)
            current = self._items.get(ident)
            if current is not None and current[1] == due_ms:
                result.append(current[0])
        return result

