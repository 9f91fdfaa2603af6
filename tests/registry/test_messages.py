"""Registry messages: signed round trips, and every kind of bad message refused with the
right reason and fault (prsm_node/registry/messages.py)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.codec import canonical, sign_bytes
from prsm_node.identity import peer_id_of as libp2p_peer_id_of
from prsm_node.registry.messages import (
    CAPABILITY_KEY,
    ExpiredMessage,
    ForgedMessage,
    FutureMessage,
    Kind,
    Limits,
    LongExpiredMessage,
    MalformedMessage,
    OversizedMessage,
    RegistryMessageError,
    WrongTopicMessage,
    decode_entry,
    peer_id_of,
    sign_entry,
)

from .helpers import CID, HOUR_MS, NOW_MS, capability_fields, make, model_fields, signer

LIMITS = Limits(message_size_max=16 * 1024, ttl_max_ms=48 * HOUR_MS, clock_skew_max_ms=30_000)

texts = st.text(min_size=1, max_size=40).filter(str.isprintable)


def decode(data: bytes, kind: Kind | None = None, now_ms: int = NOW_MS) -> Any:
    return decode_entry(data, limits=LIMITS, now_ms=now_ms, kind=kind)


def rewrap(entry_wire: bytes, change: Any) -> bytes:
    """The wire object after `change(obj)`, re-encoded (the signature is left as it was)."""
    obj = msgpack.unpackb(entry_wire, raw=False)
    change(obj)
    return msgpack.packb(obj, use_bin_type=True)


def resign(kind: Kind, body: dict[str, Any], seed: int = 1, domain: bytes | None = None) -> bytes:
    key = signer(seed)
    sig = sign_bytes(key, domain or kind.domain, canonical(body))
    return canonical({"body": body, "signer": key.public_key, "sig": sig})


@given(
    name=texts,
    architecture=st.text(min_size=1, max_size=64),
    tags=st.lists(st.text(min_size=1, max_size=64), max_size=32, unique=True),
    size=st.integers(0, 2**62),
    seq=st.integers(1, 2**63 - 1),
    seed=st.integers(1, 255),
)
def test_model_announcements_round_trip(
    name: str, architecture: str, tags: list[str], size: int, seq: int, seed: int
) -> None:
    fields = model_fields(name) | {"architecture": architecture, "tags": tags, "size_bytes": size}
    entry = make(Kind.MODEL, seed=seed, seq=seq, fields=fields)
    decoded = decode(entry.wire, Kind.MODEL)
    assert decoded.body == entry.body
    assert decoded.signer == signer(seed).public_key
    assert decoded.fingerprint == entry.fingerprint
    assert decoded.peer_id == peer_id_of(decoded.signer)


@given(
    gpus=st.integers(0, 16),
    cores=st.integers(0, 65_536),
    hints=st.dictionaries(st.text(min_size=1, max_size=64),
                          st.integers(0, 10**30).map(str), max_size=16),
)
def test_capabilities_round_trip(gpus: int, cores: int, hints: dict[str, str]) -> None:
    fields = capability_fields(gpus) | {"cpu_cores": cores, "price_hints": hints}
    entry = make(Kind.CAPABILITY, fields=fields)
    assert decode(entry.wire, Kind.CAPABILITY).body == entry.body


def test_offers_round_trip_and_any_kind_decodes_without_a_topic() -> None:
    for kind in Kind:
        entry = make(kind)
        assert decode(entry.wire).kind is kind
        assert decode(entry.wire, kind).body == entry.body


def test_our_peer_id_derivation_matches_libp2p() -> None:
    for seed in (1, 7, 200):
        assert peer_id_of(signer(seed).public_key) == libp2p_peer_id_of(bytes([seed]) * 32)


def test_a_message_larger_than_the_cap_is_refused_before_decoding() -> None:
    with pytest.raises(OversizedMessage):
        decode(b"\xc1" * (LIMITS.message_size_max + 1))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never valid msgpack
        canonical({"body": {}, "signer": b"x"}),
        canonical([1, 2, 3]),
        canonical({"body": {}, "signer": bytes(32), "sig": bytes(64), "extra": 1}),
        msgpack.packb({1: 2}),  # integer map keys
        msgpack.packb(msgpack.ExtType(5, b"abc")),
    ],
)
def test_garbage_is_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode(data)
    assert caught.value.fault


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode(make(Kind.MODEL).wire + b"\x00")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda o: o.__setitem__("sig", b""), "unsigned"),
        (lambda o: o.__setitem__("sig", b"x" * 63), "short signature"),
        (lambda o: o.__setitem__("signer", b"x" * 31), "short key"),
        (lambda o: o["body"].__setitem__("kind", "weather"), "unknown kind"),
        (lambda o: o["body"].__setitem__("extra", 1), "unexpected field"),
        (lambda o: o["body"].pop("tags"), "missing field"),
        (lambda o: o["body"].__setitem__("size_bytes", True), "bool for an int"),
        (lambda o: o["body"].__setitem__("size_bytes", 1.5), "float"),
        (lambda o: o["body"].__setitem__("size_bytes", -1), "negative size"),
        (lambda o: o["body"].__setitem__("tags", ["a", "a"]), "duplicate tags"),
        (lambda o: o["body"].__setitem__("tags", ["t"] * 33), "too many tags"),
        (lambda o: o["body"].__setitem__("name", "x" * 129), "name too long"),
        (lambda o: o["body"].__setitem__("manifest_cid", "QmNotACid"), "bad CID"),
        (lambda o: o["body"].__setitem__("key", "other"), "key is not the CID"),
        (lambda o: o["body"].__setitem__("seq", 0), "seq 0"),
        (lambda o: o["body"].__setitem__("expires_at_ms", NOW_MS - 5), "expires before issue"),
        (lambda o: o["body"].__setitem__("peer_id", "0OIl"), "not base58"),
    ],
)
def test_every_schema_breach_is_malformed(change: Any, why: str) -> None:
    with pytest.raises(MalformedMessage):
        decode(rewrap(make(Kind.MODEL).wire, change))


def test_a_node_has_one_capability_entry() -> None:
    with pytest.raises(AssertionError):  # we never sign one with another key...
        make(Kind.CAPABILITY, key="second")
    body = make(Kind.CAPABILITY).body | {"key": "second"}
    with pytest.raises(MalformedMessage):  # ...and refuse one from others
        decode(resign(Kind.CAPABILITY, body))
    assert make(Kind.CAPABILITY).body["key"] == CAPABILITY_KEY


@pytest.mark.parametrize(
    "change",
    [
        lambda o: o.__setitem__("sig", bytes(64)),
        lambda o: o.__setitem__("sig", o["sig"][:-1] + bytes([o["sig"][-1] ^ 1])),
        lambda o: o["body"].__setitem__("size_bytes", 99),
        lambda o: o.__setitem__("signer", signer(2).public_key),
    ],
)
def test_a_forged_or_altered_message_is_refused(change: Any) -> None:
    with pytest.raises(ForgedMessage) as caught:
        decode(rewrap(make(Kind.MODEL).wire, change))
    assert caught.value.fault


def test_a_body_claiming_another_nodes_peer_id_is_forged() -> None:
    body = make(Kind.MODEL).body | {"peer_id": peer_id_of(signer(9).public_key)}
    with pytest.raises(ForgedMessage):
        decode(resign(Kind.MODEL, body))


def test_a_signature_made_for_another_kind_or_object_does_not_verify() -> None:
    body = make(Kind.CAPABILITY).body
    for domain in (Kind.MODEL.domain, b"prsm/tx/1", b"prsm/record/1"):
        with pytest.raises(ForgedMessage):
            decode(resign(Kind.CAPABILITY, body, domain=domain))


def test_a_message_on_the_wrong_topic_is_refused() -> None:
    with pytest.raises(WrongTopicMessage) as caught:
        decode(make(Kind.MODEL).wire, Kind.OFFER)
    assert caught.value.fault


def test_time_window() -> None:
    future = make(Kind.MODEL, issued_at_ms=NOW_MS + 60_000, expires_at_ms=NOW_MS + HOUR_MS)
    with pytest.raises(FutureMessage):
        decode(future.wire)
    too_long = make(Kind.MODEL, expires_at_ms=NOW_MS + 49 * HOUR_MS)
    with pytest.raises(FutureMessage):
        decode(too_long.wire)
    short = make(Kind.MODEL, issued_at_ms=NOW_MS - HOUR_MS, expires_at_ms=NOW_MS - 1000)
    with pytest.raises(ExpiredMessage) as caught:
        decode(short.wire)
    assert not caught.value.fault  # within the clock skew: an honest relay may be behind
    with pytest.raises(LongExpiredMessage) as caught_long:
        decode(short.wire, now_ms=NOW_MS + HOUR_MS)
    assert caught_long.value.fault
    assert decode(short.wire, now_ms=NOW_MS - 2000).seq == 1


def test_an_expired_forgery_is_a_fault_not_a_late_message() -> None:
    short = make(Kind.MODEL, issued_at_ms=NOW_MS - HOUR_MS, expires_at_ms=NOW_MS - 1000)
    forged = rewrap(short.wire, lambda o: o.__setitem__("sig", bytes(64)))
    with pytest.raises(ForgedMessage):
        decode(forged)


@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_single_byte_change_is_refused_or_harmless(position: int, value: int) -> None:
    entry = make(Kind.MODEL)
    data = bytearray(entry.wire)
    data[position % len(data)] = value
    try:
        decoded = decode(bytes(data))
    except RegistryMessageError:
        return
    assert decoded.body == entry.body  # e.g. the same byte written back


@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_but_a_registry_error(data: bytes) -> None:
    with pytest.raises(RegistryMessageError):
        decode(data)


def test_sign_entry_refuses_a_body_outside_the_schema() -> None:
    with pytest.raises(AssertionError):
        sign_entry(Kind.MODEL, {"name": "x"}, signer(1))


def test_offer_ids_and_cids_are_checked() -> None:
    with pytest.raises(AssertionError):
        make(Kind.OFFER, key="")
    body = make(Kind.OFFER).body | {"model_cid": CID + "x"}
    with pytest.raises(MalformedMessage):
        decode(resign(Kind.OFFER, body))
