"""Wire codec: every kind round-trips; hostile bytes and dicts only ever raise
PeerProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from dht.errors import PeerProtocolError
from dht.keys import key_to_bytes
from dht.messages import (
    FRAME_SIZE_MAX,
    MessageKind,
    Request,
    Response,
    decode_frame,
    encode_message,
    message_from_wire,
    message_to_wire,
)
from dht.peer import PeerInfo
from dht.records import Ed25519Signer, RecordBody, pk_key, sign_record

PEER = b"remote-peer"
SIGNER = Ed25519Signer(SigningKey(b"\x05" * 32))
RECORD = sign_record(RecordBody(key=pk_key(SIGNER.public_key), value=b"v", seq=3,
                                expires_at_ms=10**9, publisher=b"p"), SIGNER)
PEERS = tuple(PeerInfo(peer_id=b"p%d" % i, addrs=(f"/ip4/127.0.0.1/tcp/{4000 + i}",))
              for i in range(20))

MESSAGES = [
    Request(request_id=1, kind=MessageKind.PING),
    Request(request_id=2, kind=MessageKind.FIND_NODE, key=key_to_bytes(12345)),
    Request(request_id=3, kind=MessageKind.GET_VALUE, key=RECORD.body.key),
    Request(request_id=4, kind=MessageKind.PUT_VALUE, key=RECORD.body.key, record=RECORD),
    Request(request_id=5, kind=MessageKind.ADD_PROVIDER, key=b"cid", provider=PEERS[0]),
    Request(request_id=6, kind=MessageKind.GET_PROVIDERS, key=b"cid"),
    Response(request_id=1, kind=MessageKind.PING),
    Response(request_id=2, kind=MessageKind.FIND_NODE, closer=PEERS),
    Response(request_id=3, kind=MessageKind.GET_VALUE, closer=PEERS[:3], record=RECORD),
    Response(request_id=4, kind=MessageKind.PUT_VALUE, error="stale_record"),
    Response(request_id=6, kind=MessageKind.GET_PROVIDERS, closer=PEERS[:2],
             providers=PEERS[:5]),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{type(m).__name__}-{m.kind.value}")
def test_every_message_kind_round_trips(message: Request | Response) -> None:
    frame = encode_message(message)
    assert len(frame) <= FRAME_SIZE_MAX
    assert decode_frame(PEER, frame) == message


def test_oversized_frame_is_rejected_before_decoding() -> None:
    with pytest.raises(PeerProtocolError, match="frame too large") as caught:
        decode_frame(PEER, b"\x00" * (FRAME_SIZE_MAX + 1))
    assert caught.value.peer == PEER


@pytest.mark.parametrize(
    "wire",
    [
        {"v": 2, "type": "req", "id": 1, "kind": "ping", "key": b""},
        {"v": 1, "type": "req", "id": "1", "kind": "ping", "key": b""},
        {"v": 1, "type": "req", "id": True, "kind": "ping", "key": b""},
        {"v": 1, "type": "req", "id": -1, "kind": "ping", "key": b""},
        {"v": 1, "type": "req", "id": 1, "kind": "steal", "key": b""},
        {"v": 1, "type": "nope", "id": 1, "kind": "ping"},
        {"v": 1, "type": "req", "id": 1, "kind": "find_node", "key": b"short"},
        {"v": 1, "type": "req", "id": 1, "kind": "get_value", "key": b"x" * 300},
        {"v": 1, "type": "req", "id": 1, "kind": "put_value", "key": b"/pk/x"},
        {"v": 1, "type": "req", "id": 1, "kind": "ping", "key": b"", "record": {}},
        {"v": 1, "type": "resp", "id": 1, "kind": "find_node",
         "closer": [[b"p", []]] * 21},
        {"v": 1, "type": "resp", "id": 1, "kind": "find_node", "closer": [[b"p", [1]]]},
        {"v": 1, "type": "resp", "id": 1, "kind": "find_node", "closer": [[b"", []]]},
        {"v": 1, "type": "resp", "id": 1, "kind": "ping", "providers": [[b"p", []]]},
        {"v": 1, "type": "resp", "id": 1, "kind": "ping", "error": 5},
        {"v": 1, "type": "resp", "id": 1, "kind": "get_value", "record": {"body": 1}},
        {"v": 1, "type": "resp", "id": 1, "kind": "ping", "surprise": 1},
        [1, 2],
        "text",
    ],
)
def test_malformed_messages_raise_peer_protocol_error(wire: object) -> None:
    with pytest.raises(PeerProtocolError):
        message_from_wire(PEER, wire)
    with pytest.raises(PeerProtocolError):
        decode_frame(PEER, msgpack.packb(wire, use_bin_type=True))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise_anything_but_peer_protocol_error(data: bytes) -> None:
    try:
        decode_frame(PEER, data)
    except PeerProtocolError as error:
        assert error.peer == PEER


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "type", "id", "kind", "key", "record",
                                        "provider", "closer", "providers", "error"]),
                       msgpack_values, max_size=8))
def test_arbitrary_dicts_never_raise_anything_but_peer_protocol_error(wire: dict) -> None:
    with contextlib.suppress(PeerProtocolError):
        message_from_wire(PEER, wire)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_valid_messages_never_raise_anything_but_peer_protocol_error(
    message: Request | Response, data: st.DataObject
) -> None:
    wire = message_to_wire(message)
    field = data.draw(st.sampled_from(sorted(wire)))
    wire[field] = data.draw(msgpack_values)
    frame = msgpack.packb(wire, use_bin_type=True)
    with contextlib.suppress(PeerProtocolError):
        decode_frame(PEER, frame)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
    with contextlib.suppress(PeerProtocolError):
        decode_frame(PEER, frame[:cut])
