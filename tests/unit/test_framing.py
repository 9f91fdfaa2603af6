from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prsm_node.net.framing import (
    HEADER,
    FrameError,
    FrameReader,
    FrameTooLarge,
    decode_body,
    encode_frame,
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


@given(st.lists(plain_values, min_size=1, max_size=5), st.integers(1, 70_000))
async def test_frames_round_trip_through_reads_of_any_size(values: list, chunk: int) -> None:
    stream = BytesStream(b"".join(encode_frame(value, 1 << 20) for value in values), chunk)
    reader = FrameReader(stream, 1 << 20)
    assert [await reader.read() for _ in values] == values
    assert stream.data == b""


async def test_several_small_frames_come_from_one_read() -> None:
    values = [["request", number, b"x" * 100] for number in range(50)]
    stream = BytesStream(b"".join(encode_frame(value, 1 << 20) for value in values), 1 << 20)
    reader = FrameReader(stream, 1 << 20)
    assert [await reader.read() for _ in values] == values
    assert stream.reads == 1


async def test_oversized_frame_is_refused_before_its_body_is_awaited() -> None:
    stream = BytesStream(HEADER.pack(10_000_000) + b"x" * 64, chunk=4)
    with pytest.raises(FrameTooLarge):
        await FrameReader(stream, 1024).read()
    assert stream.reads == 1  # only the 4-byte header was there to read


async def test_truncated_frame_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="short"):
        await FrameReader(BytesStream(HEADER.pack(10) + b"abc"), 1024).read()


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
