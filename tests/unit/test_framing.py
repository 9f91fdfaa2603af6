from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_node.net.framing import (
    HEADER,
    FrameError,
    FrameTooLarge,
    decode_body,
    encode_frame,
    read_frame,
)


class BytesStream:
    """A readable stream over fixed bytes that returns at most `chunk` bytes per read."""

    def __init__(self, data: bytes, chunk: int = 3) -> None:
        self.data, self.chunk, self.reads = data, chunk, 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        size = min(n or len(self.data), self.chunk)
        piece, self.data = self.data[:size], self.data[size:]
        return piece


plain_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(plain_values)
async def test_frames_round_trip_through_short_reads(value: object) -> None:
    assert await read_frame(BytesStream(encode_frame(value, 1 << 20)), 1 << 20) == value


async def test_oversized_frame_is_refused_before_its_body_is_read() -> None:
    stream = BytesStream(HEADER.pack(10_000_000) + b"x" * 64, chunk=4)
    with pytest.raises(FrameTooLarge):
        await read_frame(stream, 1024)
    assert stream.reads == 1  # only the 4-byte header was read


async def test_truncated_frame_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="short"):
        await read_frame(BytesStream(HEADER.pack(10) + b"abc"), 1024)


def test_encoding_a_value_over_the_cap_is_our_bug() -> None:
    with pytest.raises(ValueError, match="frame_size_max"):
        encode_frame(b"x" * 2000, 1024)


def test_ext_types_are_refused() -> None:
    with pytest.raises(FrameError, match="ext type"):
        decode_body(msgpack.packb(msgpack.ExtType(5, b"abc")))


def test_non_string_map_keys_are_refused() -> None:
    with pytest.raises(FrameError):
        decode_body(msgpack.packb({1: 2}))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_frame_error_only(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_body(body)
