"""The fast encoding paths give exactly the bytes of the plain definitions they replace."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.codec import canonical
from consensus.errors import TxRejected
from consensus.tx import TxBody, TxKind, admitted_tx_hash, decode_tx, sign_tx
from tests.consensus.helpers import CHAIN, signers

SENDER = signers(1, offset=40)[0]


def reference_canonical(obj: Any) -> bytes:
    """The definition: every map's keys sorted, tuples as lists, floats refused."""

    def walk(value: Any) -> Any:
        if isinstance(value, float):
            raise TypeError("floats")
        if isinstance(value, dict):
            return {key: walk(value[key]) for key in sorted(value)}
        if isinstance(value, (list, tuple)):
            return [walk(item) for item in value]
        return value

    return msgpack.packb(walk(obj), use_bin_type=True)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.binary(max_size=40), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.dictionaries(st.binary(max_size=8), inner, max_size=5),
    ),
    max_leaves=30,
)


@given(values)
@settings(max_examples=150, deadline=None)
def test_canonical_matches_its_definition(value: Any) -> None:
    assert canonical(value) == reference_canonical(value)


@given(values)
@settings(max_examples=100, deadline=None)
def test_floats_anywhere_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="floats"):
        canonical([value, {"deep": [1.5]}])


@given(kind=st.sampled_from([TxKind.STAKE, TxKind.UNSTAKE, TxKind.TRANSFER]),
       nonce=st.integers(0, 2**63 - 1), fee=st.integers(0, 2**100),
       amount=st.integers(0, 2**120), chain=st.text(min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_signed_bytes_are_the_canonical_envelope(kind: TxKind, nonce: int, fee: int,
                                                 amount: int, chain: str) -> None:
    to = signers(1, offset=41)[0].public_key if kind is TxKind.TRANSFER else b""
    body = TxBody(chain_id=chain, kind=kind, sender=SENDER.public_key, nonce=nonce, fee=fee,
                  amount=amount, to=to)
    signed = sign_tx(body, SENDER)
    assert signed.encoded == reference_canonical(
        {"body": body.to_plain(), "signer": body.sender, "sig": signed.signature})
    assert signed.body_bytes == reference_canonical(body.to_plain())
    assert decode_tx(signed.encoded, 4096) == signed
    assert admitted_tx_hash(signed.encoded) == signed.tx_hash  # the API's shortcut


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_any_other_bytes_for_the_same_transaction_are_refused(data: st.DataObject) -> None:
    """One transaction, one byte string: extra keys, reordering (of the envelope or the
    body) or a non-minimal integer or string never decode."""
    body = TxBody(chain_id=CHAIN, kind=TxKind.STAKE, sender=SENDER.public_key, nonce=3,
                  fee=10, amount=5)
    signed = sign_tx(body, SENDER)
    plain = {"body": body.to_plain(), "signer": body.sender, "sig": signed.signature}
    order = data.draw(st.permutations(["body", "signer", "sig"]))
    body_order = data.draw(st.permutations(sorted(plain["body"])))
    variants = [
        msgpack.packb({key: plain[key] for key in order}, use_bin_type=True),
        msgpack.packb({"body": {key: plain["body"][key] for key in body_order},
                       "sig": signed.signature, "signer": body.sender}, use_bin_type=True),
        signed.encoded.replace(b"\xa4kind\xa5stake", b"\xa4kind\xd9\x05stake"),  # str8
        reference_canonical({**plain, "x": 1}),
        signed.encoded.replace(b"\xa5nonce\x03", b"\xa5nonce\xcc\x03"),  # nonce as uint8
    ]
    assert variants[2] != signed.encoded, "the kind's minimal encoding was found"
    assert variants[4] != signed.encoded, "the nonce's minimal encoding was found"
    for variant in variants:
        if variant == signed.encoded:
            continue
        with pytest.raises(TxRejected):
            decode_tx(variant, 4096)
