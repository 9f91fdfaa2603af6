"""CIDv1 for the two kinds of block we store: raw (0x55) and dag-pb (0x70), sha2-256 only.

Rules:
1. A CID is ``varint(1) || varint(codec) || 0x12 0x20 || sha256(block)`` (the multiformats
   CID spec, CIDv1; multihash code 0x12 = sha2-256, length 32). Its string form is
   multibase base32 lower case without padding, prefix ``b``: what ``ipfs add
   --cid-version=1`` prints (``bafkrei...`` for raw, ``bafybei...`` for dag-pb).
2. Anything else is refused with a typed error naming what it is: CIDv0 (``Qm...``), other
   codecs (dag-cbor, ...), other hash functions. Refusing is deliberate: one block has one
   address here, so a store and a want-list never hold the same bytes under two names.
3. Parsing never trusts a length from the input: varints are capped at 9 bytes and the
   digest length must be exactly 32.

Rejected alternative: py-cid / py-multihash (pulled in by libp2p). They accept every codec
and base, which we would have to re-check anyway, and they are slow on the hot path of the
exchange (one CID per received block); the tests cross-check against them.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from storage.errors import CorruptBlockError, InvalidCidError, UnsupportedCidError

CID_VERSION = 1
CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
CODECS = {CODEC_RAW: "raw", CODEC_DAG_PB: "dag-pb"}
MULTIHASH_SHA2_256 = 0x12
DIGEST_SIZE = 32
CID_SIZE = 36
"""Bytes of every CID we accept: 1 (version) + 1 (codec < 0x80) + 2 (multihash header) + 32."""

CID_STRING_SIZE_MAX = 100
"""A base32 CIDv1 of 36 bytes is 59 characters; longer input is refused before decoding."""

VARINT_SIZE_MAX = 9
"""The multiformats unsigned-varint spec caps varints at 9 bytes (63 bits)."""


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 (multiformats unsigned-varint, protobuf varint)."""
    assert 0 <= value < 1 << 63, value
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Read a varint at ``offset``; return (value, next offset). Minimal encoding only."""
    value = 0
    for index in range(VARINT_SIZE_MAX):
        position = offset + index
        if position >= len(data):
            raise InvalidCidError("truncated varint")
        byte = data[position]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            if byte == 0 and index > 0:
                raise InvalidCidError("varint is not minimally encoded")
            return value, position + 1
    raise InvalidCidError("varint longer than 9 bytes")


@dataclass(frozen=True, slots=True, order=True)
class Cid:
    """A CIDv1 with a sha2-256 multihash. Orders by (codec, digest)."""

    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise UnsupportedCidError(f"codec 0x{self.codec:x} is not raw or dag-pb")
        if len(self.digest) != DIGEST_SIZE:
            raise InvalidCidError(f"digest is {len(self.digest)} bytes, not 32")

    # -- construction -----------------------------------------------------------------

    @classmethod
    def for_block(cls, codec: int, block: bytes | memoryview) -> Cid:
        """The CID of ``block`` under ``codec`` (hashes the bytes)."""
        return cls(codec, hashlib.sha256(block).digest())

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Cid:
        """Parse a binary CID that fills ``data`` exactly."""
        cid, end = cls.decode_prefix(data, 0)
        if end != len(data):
            raise InvalidCidError("trailing bytes after the CID")
        return cid

    @classmethod
    def decode_prefix(cls, data: bytes | memoryview, offset: int) -> tuple[Cid, int]:
        """Parse a binary CID starting at ``offset``; return (cid, next offset)."""
        if len(data) - offset >= 2 and data[offset] == MULTIHASH_SHA2_256 \
                and data[offset + 1] == DIGEST_SIZE:
            raise UnsupportedCidError("CIDv0 (a bare sha2-256 multihash) is not supported")
        version, offset = decode_varint(data, offset)
        if version != CID_VERSION:
            raise UnsupportedCidError(f"CID version {version} is not supported")
        codec, offset = decode_varint(data, offset)
        if codec not in CODECS:
            raise UnsupportedCidError(f"codec 0x{codec:x} is not raw or dag-pb")
        function, offset = decode_varint(data, offset)
        if function != MULTIHASH_SHA2_256:
            raise UnsupportedCidError(f"multihash 0x{function:x} is not sha2-256")
        size, offset = decode_varint(data, offset)
        if size != DIGEST_SIZE:
            raise InvalidCidError(f"sha2-256 digest length {size}, not 32")
        digest = bytes(data[offset:offset + DIGEST_SIZE])
        if len(digest) != DIGEST_SIZE:
            raise InvalidCidError("truncated digest")
        return cls(codec, digest), offset + DIGEST_SIZE

    @classmethod
    def parse(cls, text: str) -> Cid:
        """Parse the base32 string form (``b...``)."""
        if not isinstance(text, str) or len(text) > CID_STRING_SIZE_MAX:
            raise InvalidCidError("not a CID string of a sane length")
        if text.startswith("Qm"):
            raise UnsupportedCidError("CIDv0 (Qm...) is not supported; use CIDv1")
        if not text.startswith("b") or text != text.lower():
            raise UnsupportedCidError("only base32 lower-case CIDs (b...) are supported")
        body = text[1:].upper()
        try:
            data = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as error:
            raise InvalidCidError(f"bad base32: {error}") from None
        cid = cls.from_bytes(data)
        if str(cid) != text:
            raise InvalidCidError("non-canonical base32 (padding bits set)")
        return cid

    # -- forms ------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return bytes((CID_VERSION, self.codec, MULTIHASH_SHA2_256, DIGEST_SIZE)) + self.digest

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")

    def __repr__(self) -> str:
        return f"Cid({self})"

    @property
    def codec_name(self) -> str:
        return CODECS[self.codec]

    # -- verification -----------------------------------------------------------------

    def matches(self, block: bytes | memoryview) -> bool:
        """True when ``block`` hashes to this CID's digest."""
        return hashlib.sha256(block).digest() == self.digest

    def verify(self, block: bytes | memoryview) -> None:
        """Raise ``CorruptBlockError`` unless ``block`` hashes to this CID's digest."""
        if not self.matches(block):
            raise CorruptBlockError(self)


def raw_cid(block: bytes | memoryview) -> Cid:
    """The CID IPFS gives a raw block (``ipfs block put --cid-codec=raw``)."""
    return Cid.for_block(CODEC_RAW, block)
