"""CIDs: IPFS's strings for the same bytes; parsing refuses what we do not store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.cid import CODEC_DAG_PB, CODEC_RAW, Cid, decode_varint, encode_varint, raw_cid
from storage.errors import CorruptBlockError, InvalidCidError, UnsupportedCidError

# Known CIDs published by others: the empty raw block (Kubo: `ipfs add --cid-version=1` of an
# empty file) and the empty UnixFS directory node (Kubo's `ipfs object new unixfs-dir`,
# QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn as CIDv1).
EMPTY_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
EMPTY_DIR = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def test_known_ipfs_cids() -> None:
    assert str(raw_cid(b"")) == EMPTY_RAW
    assert str(Cid.for_block(CODEC_DAG_PB, bytes.fromhex("0a020801"))) == EMPTY_DIR


@given(st.binary(max_size=300), st.sampled_from([CODEC_RAW, CODEC_DAG_PB]))
def test_string_and_binary_forms_round_trip_and_agree_with_py_cid(data: bytes,
                                                                  codec: int) -> None:
    cid = Cid.for_block(codec, data)
    assert Cid.parse(str(cid)) == cid
    assert Cid.from_bytes(cid.to_bytes()) == cid
    assert cid.matches(data)
    import cid as py_cid  # the independent implementation pulled in by libp2p
    import multihash

    theirs = py_cid.make_cid(1, cid.codec_name, multihash.digest(data, "sha2-256").encode())
    assert theirs.encode("base32").decode() == str(cid)
    assert theirs.buffer == cid.to_bytes()


def test_verify_raises_on_other_bytes() -> None:
    cid = raw_cid(b"abc")
    cid.verify(b"abc")
    with pytest.raises(CorruptBlockError):
        cid.verify(b"abd")


@pytest.mark.parametrize("text, error", [
    ("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn", UnsupportedCidError),
    ("zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA", UnsupportedCidError),
    ("bafyreigbtj4x7ip5legnfznufuopl4sg4knzc2cof6duas4b3q2fy6swua", UnsupportedCidError),
    ("BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU", UnsupportedCidError),
    ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk", InvalidCidError),
    ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvykv", InvalidCidError),
    ("b" + "a" * 200, InvalidCidError),
    ("b!!!", InvalidCidError),
])
def test_parse_refuses_what_we_do_not_store(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        Cid.parse(text)


def test_binary_decoding_refuses_truncation_and_other_hashes() -> None:
    good = raw_cid(b"x").to_bytes()
    with pytest.raises(InvalidCidError):
        Cid.from_bytes(good[:-1])
    with pytest.raises(InvalidCidError):
        Cid.from_bytes(good + b"\x00")
    with pytest.raises(UnsupportedCidError):
        Cid.from_bytes(bytes((1, 0x55, 0x13, 0x40)) + bytes(64))  # sha2-512
    with pytest.raises(UnsupportedCidError):
        Cid.from_bytes(bytes((0x12, 0x20)) + bytes(32))  # CIDv0
    with pytest.raises(InvalidCidError):
        Cid.from_bytes(b"\x81" * 12)


@given(st.integers(0, (1 << 63) - 1))
def test_varints_round_trip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data, 0) == (value, len(data))


def test_non_minimal_varints_are_refused() -> None:
    with pytest.raises(InvalidCidError):
        decode_varint(b"\x81\x00", 0)
