"""Frames on libp2p streams: a 4-byte big-endian length, then one msgpack value.

Rules: the length is checked against `frame_size_max` before a byte of the body is read or
allocated; msgpack ext types are refused (nothing from the network is turned into objects
other than plain data); map keys must be strings. Every decoding failure is a `FrameError`
so the caller can count it and blame the peer, and nothing else escapes.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import msgpack

HEADER = struct.Struct(">I")


class FrameError(Exception):
    """The peer sent a frame that is oversized, truncated or not plain msgpack."""


class FrameTooLarge(FrameError):
    pass


class ReadableStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


def encode_frame(value: Any, frame_size_max: int) -> bytes:
    """The frame for `value`; a value too large to send is our bug, so it raises ValueError."""
    body = msgpack.packb(value, use_bin_type=True)
    if len(body) > frame_size_max:
        raise ValueError(f"frame of {len(body)} bytes exceeds frame_size_max {frame_size_max}")
    return HEADER.pack(len(body)) + body


def _refuse_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack ext type {code} not accepted")


def decode_body(body: bytes) -> Any:
    """Plain data from a frame body, or FrameError."""
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
        )
    except FrameError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise FrameError(f"malformed msgpack: {error}") from None


async def read_exactly(stream: ReadableStream, size: int) -> bytes:
    """Exactly `size` bytes; StreamEOF from the stream passes through, a short read too."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = await stream.read(remaining)
        if not chunk:
            raise FrameError(f"stream ended {remaining} bytes short of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def read_frame(stream: ReadableStream, frame_size_max: int) -> Any:
    """Read one frame and decode it; raises FrameTooLarge before reading an oversized body."""
    (length,) = HEADER.unpack(await read_exactly(stream, HEADER.size))
    if length > frame_size_max:
        raise FrameTooLarge(f"frame of {length} bytes exceeds frame_size_max {frame_size_max}")
    return decode_body(await read_exactly(stream, length))
