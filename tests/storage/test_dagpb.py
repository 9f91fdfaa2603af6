"""dag-pb and UnixFS decoding: canonical bytes, strict where the spec is, capped."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.cid import raw_cid
from storage.dagpb import (
    LINKS_PER_NODE_MAX,
    PBLink,
    PBNode,
    UnixFsData,
    UnixFsType,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from storage.errors import InvalidDagError

LINK = PBLink(hash=raw_cid(b"a"), name="", tsize=1)


def test_node_round_trips_and_links_come_before_data() -> None:
    node = PBNode(links=(LINK, PBLink(hash=raw_cid(b"b"), name=None, tsize=None)),
                  data=b"\x08\x02")
    data = encode_node(node)
    assert data[0] == 0x12 and data.endswith(b"\x0a\x02\x08\x02")
    assert decode_node(data) == node


def test_unixfs_round_trips_and_reads_packed_blocksizes() -> None:
    message = UnixFsData(type=UnixFsType.FILE, filesize=300, blocksizes=(100, 200))
    assert decode_unixfs(encode_unixfs(message)) == message
    packed = bytes.fromhex("0802") + bytes.fromhex("18ac02") + bytes.fromhex("2203") + \
        bytes([100, 0xC8, 0x01])
    assert decode_unixfs(packed).blocksizes == (100, 200)
    with_mtime = encode_unixfs(message) + bytes.fromhex("4202" "0801")
    assert decode_unixfs(with_mtime) == message


@pytest.mark.parametrize("block, match", [
    (bytes.fromhex("0a00") + encode_node(PBNode(links=(LINK,))), "Links after Data"),
    (bytes.fromhex("0a000a00"), "duplicate Data"),
    (bytes.fromhex("1a00"), "unexpected field"),
    (bytes.fromhex("0801"), "unexpected field"),
    (bytes.fromhex("1200"), "without Hash"),
    (bytes.fromhex("0a05ab"), "past the end"),
    (bytes.fromhex("0d00000000"), "wire type"),
])
def test_strict_decoding_refuses_non_canonical_nodes(block: bytes, match: str) -> None:
    with pytest.raises(InvalidDagError, match=match):
        decode_node(block)


def test_link_fields_out_of_order_are_refused() -> None:
    link = bytes.fromhex("1200") + bytes.fromhex("0a24") + raw_cid(b"a").to_bytes()
    with pytest.raises(InvalidDagError, match="order"):
        decode_node(bytes([0x12, len(link)]) + link)


def test_link_count_is_capped() -> None:
    node = encode_node(PBNode(links=(LINK,) * (LINKS_PER_NODE_MAX + 1)))
    with pytest.raises(InvalidDagError, match="links"):
        decode_node(node)


@given(st.binary(max_size=300))
def test_decoding_any_bytes_raises_only_the_typed_error(data: bytes) -> None:
    for decode in (decode_node, decode_unixfs):
        with contextlib.suppress(InvalidDagError):
            decode(data)
