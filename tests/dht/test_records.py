"""Signed records, namespace validators, record/provider stores and republish bookkeeping."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from nacl.signing import SigningKey

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
from dht.records import (
    RECORD_DOMAIN,
    Ed25519Signer,
    ProviderStore,
    PutOutcome,
    RecordBody,
    RecordStore,
    RecordValidator,
    Republisher,
    RepublishItem,
    RepublishKind,
    SignedRecord,
    canonical_encode,
    pk_key,
    record_from_wire,
    registry_key,
    sign_record,
)

NOW = 1_000_000
HOUR = 3_600_000


def signer(seed: int) -> Ed25519Signer:
    return Ed25519Signer(SigningKey(bytes([seed]) * 32))


def make_record(by: Ed25519Signer, *, seq: int = 1, key: bytes | None = None,
                value: bytes = b"value", expires_at_ms: int = NOW + HOUR) -> SignedRecord:
    body = RecordBody(key=key if key is not None else pk_key(by.public_key), value=value,
                      seq=seq, expires_at_ms=expires_at_ms, publisher=b"peer")
    return sign_record(body, by)


def test_canonical_encoding_sorts_keys_and_rejects_floats() -> None:
    assert canonical_encode({"b": 1, "a": 2}) == canonical_encode({"a": 2, "b": 1})
    assert msgpack.unpackb(canonical_encode({"b": 1, "a": 2})) == {"a": 2, "b": 1}
    with pytest.raises(InvalidRecordError):
        canonical_encode({"x": 1.5})
    with pytest.raises(InvalidRecordError):
        canonical_encode({1: "non-string key"})


def test_valid_pk_record_verifies_and_signature_covers_the_domain_tag() -> None:
    alice = signer(1)
    record = make_record(alice)
    assert RecordValidator().validate(record, NOW) == record.encoded_size()
    # the same body signed without the domain tag is not a valid record signature
    bare = SigningKey(bytes([1]) * 32).sign(canonical_encode(record.body.to_wire())).signature
    assert bare != record.sig
    with pytest.raises(ForgedRecordError):
        RecordValidator().validate(dataclasses.replace(record, sig=bare), NOW)
    assert RECORD_DOMAIN == b"prsm/record/1"


def test_forged_signature_is_rejected() -> None:
    record = make_record(signer(1))
    flipped = bytes([record.sig[0] ^ 1]) + record.sig[1:]
    with pytest.raises(ForgedRecordError):
        RecordValidator().validate(dataclasses.replace(record, sig=flipped), NOW)
    tampered = dataclasses.replace(record, body=dataclasses.replace(record.body, value=b"evil"))
    with pytest.raises(ForgedRecordError):
        RecordValidator().validate(tampered, NOW)


def test_pk_record_must_be_signed_by_the_key_it_names() -> None:
    alice, mallory = signer(1), signer(2)
    record = make_record(mallory, key=pk_key(alice.public_key))
    with pytest.raises(InvalidRecordError, match="not signed by the key"):
        RecordValidator().validate(record, NOW)


def test_registry_record_is_checked_by_its_schema() -> None:
    alice = signer(1)
    good = make_record(alice, key=registry_key(alice.public_key, "model"),
                       value=msgpack.packb({"name": "m"}))
    RecordValidator().validate(good, NOW)
    with pytest.raises(InvalidRecordError):
        RecordValidator().validate(dataclasses.replace(good, body=dataclasses.replace(
            good.body, value=msgpack.packb({"price": 1.5}))), NOW)
    not_a_map = make_record(alice, key=registry_key(alice.public_key, "model"), value=b"\xc1")
    with pytest.raises(InvalidRecordError):
        RecordValidator().validate(not_a_map, NOW)

    def strict(key: bytes, value: bytes) -> None:
        raise InvalidRecordError("schema says no")

    with pytest.raises(InvalidRecordError, match="schema says no"):
        RecordValidator(registry_schema=strict).validate(good, NOW)


@pytest.mark.parametrize("key", [b"/ipns/abc", b"no-namespace", b"/", b"//x"])
def test_unknown_namespaces_are_rejected(key: bytes) -> None:
    with pytest.raises(UnknownNamespaceError):
        RecordValidator().validate(make_record(signer(1), key=key), NOW)


def test_size_cap_and_expiry_window() -> None:
    alice = signer(1)
    validator = RecordValidator(record_size_max=1024, ttl_max_ms=2 * HOUR)
    with pytest.raises(RecordTooLargeError):
        validator.validate(make_record(alice, value=b"x" * 2000), NOW)
    with pytest.raises(RecordExpiredError):
        validator.validate(make_record(alice, expires_at_ms=NOW), NOW)
    with pytest.raises(InvalidRecordError, match="future"):
        validator.validate(make_record(alice, expires_at_ms=NOW + 3 * HOUR), NOW)


def test_record_wire_form_round_trips_and_rejects_bad_shapes() -> None:
    record = make_record(signer(1))
    assert record_from_wire(msgpack.unpackb(canonical_encode(record.to_wire()))) == record
    wire = record.to_wire()
    for broken in (
        {**wire, "extra": 1},
        {**wire, "sig": b"short"},
        {**wire, "signer": "text"},
        {**wire, "body": {**wire["body"], "seq": -1}},
        {**wire, "body": {**wire["body"], "seq": True}},
        {**wire, "body": {**wire["body"], "value": "text"}},
        [1, 2, 3],
    ):
        with pytest.raises(InvalidRecordError):
            record_from_wire(broken)


def test_newer_seq_replaces_and_stale_seq_is_rejected() -> None:
    alice = signer(1)
    store = RecordStore(key_from_bytes(b"own"))
    first, second = make_record(alice, seq=1), make_record(alice, seq=2)
    assert store.put(first, first.encoded_size()) is PutOutcome.STORED
    assert store.put(first, first.encoded_size()) is PutOutcome.UNCHANGED
    assert store.put(second, second.encoded_size()) is PutOutcome.REPLACED
    with pytest.raises(StaleRecordError):
        store.put(first, first.encoded_size())
    same_version = make_record(alice, seq=2, value=b"other")
    with pytest.raises(StaleRecordError):
        store.put(same_version, same_version.encoded_size())
    assert store.get(second.body.key, NOW) == second
    refreshed = make_record(alice, seq=2, expires_at_ms=NOW + 2 * HOUR)
    assert store.put(refreshed, refreshed.encoded_size()) is PutOutcome.REPLACED


def test_records_expire_given_now() -> None:
    store = RecordStore(key_from_bytes(b"own"))
    record = make_record(signer(1), expires_at_ms=NOW + 10)
    store.put(record, record.encoded_size())
    assert store.get(record.body.key, NOW + 9) == record
    assert store.get(record.body.key, NOW + 10) is None
    assert store.expire(NOW + 10, count_max=100) == 1
    assert len(store) == 0 and store.bytes_total == 0 and store.expired_total == 1


def test_records_per_signer_are_capped() -> None:
    alice = signer(1)
    store = RecordStore(key_from_bytes(b"own"), records_per_signer_max=3)
    for index in range(3):
        record = make_record(alice, key=registry_key(alice.public_key, f"m{index}"))
        store.put(record, record.encoded_size())
    extra = make_record(alice, key=registry_key(alice.public_key, "m9"))
    with pytest.raises(QuotaExceededError):
        store.put(extra, extra.encoded_size())
    other = make_record(signer(2))
    assert store.put(other, other.encoded_size()) is PutOutcome.STORED


def test_full_store_evicts_farthest_key_first_and_refuses_a_farther_one() -> None:
    own = key_from_bytes(b"own")
    records = [make_record(signer(seed)) for seed in range(1, 12)]
    records.sort(key=lambda r: key_from_bytes(r.body.key) ^ own)
    size = records[0].encoded_size()
    store = RecordStore(own, store_bytes_max=size * 5 + size // 2)
    for record in records[1:6]:
        store.put(record, record.encoded_size())
    with pytest.raises(StoreFullError):
        store.put(records[-1], records[-1].encoded_size())  # farther than all we hold
    store.put(records[0], records[0].encoded_size())  # closest: evicts the farthest held
    assert store.evicted_total == 1
    assert store.get(records[5].body.key, NOW) is None
    assert store.get(records[0].body.key, NOW) is not None
    assert store.bytes_total <= store.store_bytes_max


def provider(index: int) -> PeerInfo:
    return PeerInfo(peer_id=b"prov-%d" % index, addrs=(f"sim://{index}",))


def test_provider_flood_from_one_peer_is_capped() -> None:
    store = ProviderStore(keys_per_provider_max=10)
    flooder = provider(1)
    for index in range(10):
        store.add(b"key-%d" % index, flooder, NOW)
    with pytest.raises(QuotaExceededError):
        store.add(b"key-99", flooder, NOW)
    assert store.count == 10
    store.add(b"key-0", flooder, NOW + 1)  # refreshing a key it already provides is fine
    store.add(b"key-99", provider(2), NOW)


def test_full_key_evicts_the_provider_expiring_soonest() -> None:
    store = ProviderStore(providers_per_key_max=3, ttl_ms=HOUR)
    for index in range(3):
        store.add(b"cid", provider(index), NOW + index)
    store.add(b"cid", provider(9), NOW + 10)
    ids = {p.peer_id for p in store.get(b"cid", NOW + 20, 10)}
    assert ids == {b"prov-1", b"prov-2", b"prov-9"}


def test_provider_records_expire_after_ttl_and_total_is_capped() -> None:
    store = ProviderStore(ttl_ms=24 * HOUR, records_max=2)
    store.add(b"a", provider(1), NOW)
    store.add(b"b", provider(2), NOW)
    with pytest.raises(StoreFullError):
        store.add(b"c", provider(3), NOW)
    assert store.get(b"a", NOW + 24 * HOUR - 1, 10) == [provider(1)]
    assert store.get(b"a", NOW + 24 * HOUR, 10) == []
    assert store.expire(NOW + 24 * HOUR, 100) == 2
    assert store.count == 0 and store.keys() == 0


def test_republisher_reports_items_when_due_and_is_bounded() -> None:
    republisher = Republisher(record_interval_ms=HOUR, provider_interval_ms=2 * HOUR,
                              entries_max=2)
    record = make_record(signer(1))
    republisher.track(RepublishItem(kind=RepublishKind.RECORD, key=record.body.key,
                                    record=record), NOW)
    republisher.track(RepublishItem(kind=RepublishKind.PROVIDER, key=b"cid", record=None), NOW)
    with pytest.raises(LocalCommandError):
        republisher.track(RepublishItem(kind=RepublishKind.PROVIDER, key=b"x", record=None),
                          NOW)
    assert republisher.due(NOW + HOUR - 1, 10) == []
    due = republisher.due(NOW + HOUR, 10)
    assert [item.kind for item in due] == [RepublishKind.RECORD]
    assert [item.key for item in republisher.due(NOW + 2 * HOUR, 10)] == [b"cid"]
    republisher.untrack(RepublishKind.RECORD, record.body.key)
    assert len(republisher) == 1
