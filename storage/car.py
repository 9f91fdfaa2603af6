"""CARv1 export and import: moving blocks to and from any IPFS node (issue 5, item 5).

Rules:
1. Format (IPLD "CAR v1" spec): ``varint(n) || header`` where header is the dag-cbor map
   ``{"roots": [CID, ...], "version": 1}``, then sections ``varint(n) || CID || block``.
   The header is tiny, so we encode and decode its CBOR by hand: definite lengths only,
   the CIDs as tag 42 over ``0x00 || binary CID`` (the dag-cbor CID encoding), and map
   keys in dag-cbor order (length first: "roots" before "version").
2. Import never trusts the file: the header, every section and the whole file have caps
   checked before anything is allocated, every block is hashed against its CID before it
   is handed on, and any failure is an ``InvalidCarError`` / ``CorruptBlockError`` /
   ``UnsupportedCidError`` naming the offset.
3. Only what ``storage.cid`` accepts comes in: CIDv1 raw or dag-pb with sha2-256 (what
   ``ipfs add --cid-version=1`` and ``ipfs dag export`` of such a DAG produce). CARv2 is
   detected and refused with a message that says how to convert.
4. Export writes blocks depth-first in pre-order, each block once: ``ipfs dag export``'s
   order, so a streaming reader meets a parent before its children.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from storage.cid import CID_SIZE, Cid, decode_varint, encode_varint
from storage.dagpb import BLOCK_SIZE_MAX
from storage.errors import CorruptBlockError, InvalidCarError, InvalidCidError
from storage.unixfs import DAG_BLOCKS_MAX, Block, BlockGetter, iter_dag

CAR_VERSION = 1
HEADER_SIZE_MAX = 64 * 1024
"""Bytes of a CAR header; one root takes 43 bytes, so this is far above ``ROOTS_MAX``."""
ROOTS_MAX = 1024
SECTION_SIZE_MAX = CID_SIZE + BLOCK_SIZE_MAX
CAR_SIZE_MAX_DEFAULT = 1 << 40
"""Default cap on an imported CAR's bytes (1 TiB); the caller passes its free quota."""

_CID_TAG = 42
_CARV2_PRAGMA = bytes.fromhex("0aa16776657273696f6e02")


@dataclass(frozen=True, slots=True, kw_only=True)
class CarSummary:
    roots: tuple[Cid, ...]
    block_count: int
    size: int  # bytes of the CAR file


# -- the header's CBOR --------------------------------------------------------------------


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes((major << 5 | value,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes((major << 5 | info,)) + value.to_bytes(width, "big")
    raise AssertionError(value)


def encode_header(roots: Iterable[Cid]) -> bytes:
    """dag-cbor ``{"roots": [...], "version": 1}`` (rule 1)."""
    roots = tuple(roots)
    assert 1 <= len(roots) <= ROOTS_MAX, len(roots)
    out = _cbor_head(5, 2) + _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(roots))
    for root in roots:
        link = b"\x00" + root.to_bytes()
        out += _cbor_head(6, _CID_TAG) + _cbor_head(2, len(link)) + link
    return out + _cbor_head(3, 7) + b"version" + _cbor_head(0, CAR_VERSION)


class _CborReader:
    """Just enough CBOR for a CAR header: uint, bytes, text, array, map, tag 42."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def _take(self, count: int) -> bytes:
        if count > len(self.data) - self.offset:
            raise InvalidCarError("CAR header: CBOR runs past the header")
        piece = self.data[self.offset:self.offset + count]
        self.offset += count
        return piece

    def _head(self) -> tuple[int, int]:
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info
        if info > 27:
            raise InvalidCarError("CAR header: indefinite or reserved CBOR length")
        return major, int.from_bytes(self._take(1 << (info - 24)), "big")

    def item(self, depth: int = 0) -> object:
        if depth > 4:
            raise InvalidCarError("CAR header: nesting too deep")
        major, value = self._head()
        if major == 0:
            return value
        if major in (2, 3):
            raw = self._take(value)
            return raw if major == 2 else raw.decode("utf-8", errors="strict")
        if major == 4:
            if value > ROOTS_MAX:
                raise InvalidCarError(f"CAR header: array of {value} > {ROOTS_MAX}")
            return [self.item(depth + 1) for _ in range(value)]
        if major == 5:
            if value > 8:
                raise InvalidCarError("CAR header: map too large")
            pairs = [(self.item(depth + 1), self.item(depth + 1)) for _ in range(value)]
            return dict(pairs)  # type: ignore[arg-type]
        if major == 6 and value == _CID_TAG:
            link = self.item(depth + 1)
            if not isinstance(link, bytes) or not link.startswith(b"\x00"):
                raise InvalidCarError("CAR header: tag 42 is not 0x00 || CID bytes")
            return Cid.from_bytes(link[1:])
        raise InvalidCarError(f"CAR header: CBOR major type {major} not expected")


def decode_header(data: bytes) -> tuple[Cid, ...]:
    """The roots of a CARv1 header (any key order; unknown keys refused)."""
    reader = _CborReader(data)
    try:
        header = reader.item()
    except (UnicodeDecodeError, InvalidCidError) as error:
        raise InvalidCarError(f"CAR header: {error}") from None
    if reader.offset != len(data):
        raise InvalidCarError("CAR header: trailing bytes")
    if not isinstance(header, dict) or header.get("version") != CAR_VERSION:
        raise InvalidCarError("CAR header: not a version 1 header")
    roots = header.get("roots")
    if set(header) != {"roots", "version"} or not isinstance(roots, list) or not roots:
        raise InvalidCarError("CAR header: needs exactly 'roots' (non-empty) and 'version'")
    if not all(isinstance(root, Cid) for root in roots):
        raise InvalidCarError("CAR header: a root is not a CID")
    return tuple(roots)


# -- writing ------------------------------------------------------------------------------


class CarWriter:
    """Writes a CARv1 to a binary stream: the header now, then one section per ``put``."""

    def __init__(self, stream: BinaryIO, roots: Iterable[Cid]) -> None:
        header = encode_header(roots)
        self._stream = stream
        self.size = 0
        self.block_count = 0
        self._write(encode_varint(len(header)) + header)

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self.size += len(data)

    def put(self, block: Block) -> None:
        cid = block.cid.to_bytes()
        self._write(encode_varint(len(cid) + len(block.data)) + cid)
        self._write(block.data)
        self.block_count += 1


def export_car(stream: BinaryIO, roots: Iterable[Cid], get_block: BlockGetter, *,
               blocks_max: int = DAG_BLOCKS_MAX) -> CarSummary:
    """Write the DAGs under ``roots`` (each block once, pre-order) as a CARv1."""
    roots = tuple(roots)
    writer = CarWriter(stream, roots)
    written: set[Cid] = set()
    for root in roots:
        for block in iter_dag(root, get_block, blocks_max=blocks_max):
            if block.cid not in written:
                written.add(block.cid)
                writer.put(block)
    return CarSummary(roots=roots, block_count=writer.block_count, size=writer.size)


# -- reading ------------------------------------------------------------------------------


class _StreamReader:
    def __init__(self, stream: BinaryIO, size_max: int) -> None:
        self.stream = stream
        self.offset = 0
        self.size_max = size_max

    def read_exactly(self, count: int, what: str) -> bytes:
        if self.offset + count > self.size_max:
            raise InvalidCarError(f"CAR larger than {self.size_max} bytes")
        data = self.stream.read(count)
        while len(data) < count:
            more = self.stream.read(count - len(data))
            if not more:
                raise InvalidCarError(f"truncated {what} at offset {self.offset}")
            data += more
        self.offset += count
        return data

    def read_varint(self, what: str) -> int | None:
        """A varint, or None at a clean end of stream."""
        raw = bytearray()
        while True:
            byte = self.stream.read(1)
            if not byte:
                if raw:
                    raise InvalidCarError(f"truncated {what} length at offset {self.offset}")
                return None
            raw += byte
            self.offset += 1
            if byte[0] < 0x80 or len(raw) >= 9:
                break
        try:
            return decode_varint(bytes(raw), 0)[0]
        except InvalidCidError as error:
            raise InvalidCarError(f"{what} length: {error}") from None


def read_car(stream: BinaryIO, *, size_max: int = CAR_SIZE_MAX_DEFAULT,
             blocks_max: int = DAG_BLOCKS_MAX) -> tuple[tuple[Cid, ...], Iterator[Block]]:
    """Read the header now; return the roots and an iterator of verified blocks."""
    reader = _StreamReader(stream, size_max)
    roots = _read_header(reader)
    return roots, _iter_sections(reader, blocks_max)


def _read_header(reader: _StreamReader) -> tuple[Cid, ...]:
    length = reader.read_varint("header")
    if length is None or length == 0:
        raise InvalidCarError("empty CAR")
    if length > HEADER_SIZE_MAX:
        raise InvalidCarError(f"CAR header of {length} bytes exceeds {HEADER_SIZE_MAX}")
    header = reader.read_exactly(length, "header")
    if encode_varint(length) + header == _CARV2_PRAGMA:
        raise InvalidCarError("CARv2 is not supported: convert it with "
                              "'ipfs-car' or 'car convert --version 1' first")
    return decode_header(header)


def _iter_sections(reader: _StreamReader, blocks_max: int) -> Iterator[Block]:
    count = 0
    while True:
        start = reader.offset
        length = reader.read_varint("section")
        if length is None:
            return
        if not CID_SIZE <= length <= SECTION_SIZE_MAX:  # an empty block is just its CID
            raise InvalidCarError(f"section of {length} bytes at offset {start}")
        if count >= blocks_max:
            raise InvalidCarError(f"CAR holds more than {blocks_max} blocks")
        section = reader.read_exactly(length, "section")
        try:
            cid, end = Cid.decode_prefix(section, 0)
        except InvalidCidError as error:
            error.args = (f"section at offset {start}: {error}",)
            raise
        data = section[end:]
        if not cid.matches(data):
            raise CorruptBlockError(cid, f"block at offset {start} does not match its CID")
        count += 1
        yield Block(cid, data)


def import_car(stream: BinaryIO, put: Callable[[Block], None], *,
               size_max: int = CAR_SIZE_MAX_DEFAULT,
               blocks_max: int = DAG_BLOCKS_MAX) -> CarSummary:
    """Verify and hand every block of a CAR to ``put``; nothing unverified gets through."""
    reader = _StreamReader(stream, size_max)
    roots = _read_header(reader)
    count = 0
    for block in _iter_sections(reader, blocks_max):
        put(block)
        count += 1
    return CarSummary(roots=roots, block_count=count, size=reader.offset)
