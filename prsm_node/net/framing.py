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


READ_CHUNK = 64 * 1024
"""Bytes asked of the stream per read: py-libp2p's yamux hands out at most 64 KiB per frame."""


class FrameReader:
    """The frames of one stream, read in chunks of up to ``READ_CHUNK`` bytes.

    Why not two reads per frame (header, then body): each py-libp2p yamux read takes a lock
    and usually sends the peer a WINDOW_UPDATE frame (Noise-encrypted, one socket write),
    so at thousands of small frames a second the reads cost more than the frames. One read
    here brings a frame's header with its body, and often the next frames too. A frame's
    length is still checked against ``frame_size_max`` before its body is awaited, and the
    buffer never holds more than one frame plus one chunk. The reader must be the stream's
    only reader: what it buffered belongs to the next frame.
    """

    def __init__(self, stream: ReadableStream, frame_size_max: int) -> None:
        self._stream = stream
        self._frame_size_max = frame_size_max
        self._buffer = bytearray()

    async def read(self) -> Any:
        """The next frame's value; FrameError for a bad frame, the stream's EOF and reset
        errors pass through (between frames they are a clean end)."""
        (length,) = HEADER.unpack(await self._take(HEADER.size))
        if length > self._frame_size_max:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds frame_size_max {self._frame_size_max}"
            )
        return decode_body(await self._take(length))

    async def _take(self, size: int) -> bytes:
        buffer = self._buffer
        while len(buffer) < size:
            chunk = await self._stream.read(max(READ_CHUNK, size - len(buffer)))
            if not chunk:
                raise FrameError(f"stream ended {size - len(buffer)} bytes short of a frame")
            buffer += chunk
        taken = bytes(buffer[:size])
        del buffer[:size]
        return taken
