"""A tiny deterministic protobuf codec for dag-pb (PBNode, PBLink) and the UnixFS Data message.

Rules:
1. Encoding is the canonical dag-pb form (IPLD spec "DAG-PB", section "Canonical form"):
   PBNode writes its Links (field 2) before its Data (field 1); PBLink writes Hash (1),
   Name (2), Tsize (3) in that order. UnixFS Data writes Type (1), Data (2), filesize (3),
   then each blocksize (4) as its own varint field (proto2 repeated, unpacked), as Kubo
   and js-ipfs-unixfs do. Same input, same bytes: the CIDs depend on it.
2. Decoding is strict where the dag-pb spec is strict (unknown fields, duplicate Data,
   Links after Data, PBLink fields out of order or missing Hash are refused) and lenient
   where UnixFS producers differ (packed blocksizes, the optional mode / mtime / hashType /
   fanout fields are read and ignored).
3. Nothing trusts a length from the data: every length is checked against what is left of
   the buffer, a block is capped at ``BLOCK_SIZE_MAX`` and a node at ``LINKS_PER_NODE_MAX``
   links before any work is done per link.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from storage.cid import Cid, decode_varint, encode_varint
from storage.errors import InvalidCidError, InvalidDagError

BLOCK_SIZE_MAX = 2 * 1024 * 1024
"""Largest block we decode or accept. Our own blocks are at most 1 MiB of data plus a few
bytes; 2 MiB is the hard block limit of Kubo and bitswap, so any block an IPFS node serves
fits, and anything larger is refused before it is hashed or parsed."""

LINKS_PER_NODE_MAX = 16_384
"""Links we read from one dag-pb node. We write at most 174 (the balanced layout); other
importers write up to a few thousand (a 2 MiB node holds ~45k minimal links, which we
refuse rather than allocate for)."""

LINK_NAME_SIZE_MAX = 255
"""Bytes in a link name: a file name (POSIX NAME_MAX); our file nodes use the empty name."""

WIRE_VARINT = 0
WIRE_LENGTH_DELIMITED = 2


class UnixFsType(enum.IntEnum):
    """UnixFS ``Data.DataType`` (unixfs.proto)."""

    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class PBLink:
    hash: Cid
    name: str | None = ""
    tsize: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnixFsData:
    type: UnixFsType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = ()


# -- wire primitives ----------------------------------------------------------------------


def _key(field: int, wire_type: int) -> bytes:
    return encode_varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, WIRE_LENGTH_DELIMITED) + encode_varint(len(payload)) + payload


def _varint_field(field: int, value: int) -> bytes:
    return _key(field, WIRE_VARINT) + encode_varint(value)


def _read_varint(data: bytes | memoryview, offset: int) -> tuple[int, int]:
    try:
        return decode_varint(data, offset)
    except InvalidCidError as error:
        raise InvalidDagError(f"bad varint: {error}") from None


def iter_fields(data: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value): an int for varints, a view for bytes.

    Only wire types 0 and 2 exist in these messages; any other type is refused."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        key, offset = _read_varint(view, offset)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise InvalidDagError("field number 0")
        if wire_type == WIRE_VARINT:
            value, offset = _read_varint(view, offset)
            yield field, wire_type, value
        elif wire_type == WIRE_LENGTH_DELIMITED:
            size, offset = _read_varint(view, offset)
            if size > len(view) - offset:
                raise InvalidDagError("length runs past the end of the message")
            yield field, wire_type, view[offset:offset + size]
            offset += size
        else:
            raise InvalidDagError(f"wire type {wire_type} not used by dag-pb or UnixFS")


# -- PBNode / PBLink ----------------------------------------------------------------------


def encode_link(link: PBLink) -> bytes:
    out = _length_delimited(1, link.hash.to_bytes())
    if link.name is not None:
        out += _length_delimited(2, link.name.encode("utf-8"))
    if link.tsize is not None:
        out += _varint_field(3, link.tsize)
    return out


def encode_node(node: PBNode) -> bytes:
    """Canonical dag-pb bytes: links first, then data."""
    parts = [_length_delimited(2, encode_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(_length_delimited(1, node.data))
    return b"".join(parts)


def decode_link(data: memoryview) -> PBLink:
    fields: dict[int, object] = {}
    last = 0
    for field, wire_type, value in iter_fields(data):
        expected = {1: WIRE_LENGTH_DELIMITED, 2: WIRE_LENGTH_DELIMITED, 3: WIRE_VARINT}
        if field not in expected or wire_type != expected[field]:
            raise InvalidDagError(f"PBLink: unexpected field {field} (wire type {wire_type})")
        if field <= last:
            raise InvalidDagError("PBLink: fields out of order or repeated")
        last = field
        fields[field] = value
    if 1 not in fields:
        raise InvalidDagError("PBLink without Hash")
    try:
        cid = Cid.from_bytes(fields[1])  # type: ignore[arg-type]
    except InvalidCidError as error:
        raise InvalidDagError(f"PBLink Hash: {error}") from None
    name = None
    if 2 in fields:
        raw_name = bytes(fields[2])  # type: ignore[arg-type]
        if len(raw_name) > LINK_NAME_SIZE_MAX:
            raise InvalidDagError("PBLink Name too long")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidDagError("PBLink Name is not UTF-8") from None
    tsize = fields.get(3)
    return PBLink(hash=cid, name=name, tsize=tsize)  # type: ignore[arg-type]


def decode_node(block: bytes | memoryview) -> PBNode:
    """Parse a dag-pb block, strictly (rule 2), within the caps (rule 3)."""
    if len(block) > BLOCK_SIZE_MAX:
        raise InvalidDagError(f"dag-pb block of {len(block)} bytes exceeds {BLOCK_SIZE_MAX}")
    links: list[PBLink] = []
    data: bytes | None = None
    for field, wire_type, value in iter_fields(block):
        if wire_type != WIRE_LENGTH_DELIMITED or field not in (1, 2):
            raise InvalidDagError(f"PBNode: unexpected field {field} (wire type {wire_type})")
        assert isinstance(value, memoryview)
        if field == 2:
            if data is not None:
                raise InvalidDagError("PBNode: Links after Data")
            if len(links) >= LINKS_PER_NODE_MAX:
                raise InvalidDagError(f"PBNode: more than {LINKS_PER_NODE_MAX} links")
            links.append(decode_link(value))
        else:
            if data is not None:
                raise InvalidDagError("PBNode: duplicate Data")
            data = bytes(value)
    return PBNode(links=tuple(links), data=data)


# -- UnixFS Data --------------------------------------------------------------------------


def encode_unixfs(message: UnixFsData) -> bytes:
    out = _varint_field(1, int(message.type))
    if message.data is not None:
        out += _length_delimited(2, message.data)
    if message.filesize is not None:
        out += _varint_field(3, message.filesize)
    for size in message.blocksizes:
        out += _varint_field(4, size)
    return out


def decode_unixfs(data: bytes | memoryview) -> UnixFsData:
    """Parse a UnixFS Data message (lenient on optional fields, rule 2)."""
    type_value: int | None = None
    payload: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    for field, wire_type, value in iter_fields(data):
        if field == 1 and wire_type == WIRE_VARINT:
            type_value = value  # type: ignore[assignment]
        elif field == 2 and wire_type == WIRE_LENGTH_DELIMITED:
            payload = bytes(value)  # type: ignore[arg-type]
        elif field == 3 and wire_type == WIRE_VARINT:
            filesize = value  # type: ignore[assignment]
        elif field == 4 and wire_type == WIRE_VARINT:
            blocksizes.append(value)  # type: ignore[arg-type]
        elif field == 4 and wire_type == WIRE_LENGTH_DELIMITED:
            blocksizes.extend(_packed_varints(value))  # type: ignore[arg-type]
        elif field not in (5, 6, 7, 8):
            raise InvalidDagError(f"UnixFS: unexpected field {field} (wire type {wire_type})")
        if len(blocksizes) > LINKS_PER_NODE_MAX:
            raise InvalidDagError("UnixFS: too many blocksizes")
    if type_value is None:
        raise InvalidDagError("UnixFS Data without Type")
    try:
        kind = UnixFsType(type_value)
    except ValueError:
        raise InvalidDagError(f"UnixFS: unknown type {type_value}") from None
    return UnixFsData(type=kind, data=payload, filesize=filesize, blocksizes=tuple(blocksizes))


def _packed_varints(view: memoryview) -> Iterator[int]:
    offset = 0
    while offset < len(view):
        value, offset = _read_varint(view, offset)
        yield value
