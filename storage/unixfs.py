"""UnixFS files: the balanced DAG builder and the verified reader, both streaming.

Rules:
1. The builder gives exactly the root CID that ``ipfs add --cid-version=1 --raw-leaves
   --chunker=size-1048576`` gives (Kubo's and js-ipfs-unixfs-importer's balanced layout):
   fixed-size chunks as raw leaves; ``links_per_node_max`` (174) children per dag-pb node;
   a file of one chunk (the empty file included) is its raw leaf; parent links carry
   ``Name=""`` and ``Tsize`` = the child's block size plus its children's Tsizes; the
   UnixFS Data of a parent is ``{Type: File, filesize, blocksizes}``. Checked against
   fixtures from ipfs-unixfs-importer (tests/fixtures/storage/unixfs_roots.json).
2. Streaming: the builder holds at most one chunk plus ``links_per_node_max`` links per
   tree level; blocks are handed to the caller as soon as they are complete.
3. The reader verifies every block against its CID (the getter may be a peer), checks each
   node against the sizes its parent declared, caps the depth and the output size, and
   never trusts a length from the data before checking it against the bytes at hand.

Theory of operation (the layout). The reference importer batches leaves 174 at a time into
parents, then batches those parents 174 at a time, until one node is left; a batch of one
still gets a parent, except a lone leaf, which is the file itself. Building level by level
with eager flushing is the same tree: level ``i`` holds the links of its unfinished parent;
when it reaches 174 links the parent is written and linked one level up. At the end each
level below the top is flushed upward, and the top level is the root if it holds one link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from storage.cid import CODEC_DAG_PB, CODEC_RAW, Cid
from storage.dagpb import (
    BLOCK_SIZE_MAX,
    PBLink,
    PBNode,
    UnixFsData,
    UnixFsType,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from storage.errors import CorruptBlockError, InvalidDagError

CHUNK_SIZE = 1024 * 1024
"""Bytes per leaf: issue 5 (``--chunker=size-1048576``); Kubo's soft block limit is 1 MiB."""

LINKS_PER_NODE_MAX = 174
"""Children per node in the balanced layout: Kubo's and js-ipfs' default
(``DefaultLinksPerBlock``: 8 KiB / ~47 bytes per link), so our roots equal theirs."""

DAG_DEPTH_MAX = 16
"""Levels the reader follows. 174^6 MiB chunks already exceed any disk; a deeper DAG is
hostile or broken, and the cap bounds the reader's stack."""

DAG_BLOCKS_MAX = 1 << 24
"""Distinct blocks a DAG walk visits (16 TiB of 1 MiB leaves); bounds the visited set."""


@dataclass(frozen=True, slots=True)
class Block:
    """A block and its CID; built only by code that hashed the bytes or verified them."""

    cid: Cid
    data: bytes


@dataclass(frozen=True, slots=True)
class _Child:
    cid: Cid
    tsize: int  # block bytes of the child plus its children's Tsizes (dag-pb Tsize)
    filesize: int  # file bytes under the child (UnixFS blocksize)


@dataclass(slots=True)
class FileBuilder:
    """Cuts a byte stream into chunks and builds the balanced UnixFS DAG over them.

    ``add`` and ``finish`` return the blocks completed by that call, leaves before the
    parents that link them; ``root`` is set by ``finish``."""

    chunk_size: int = CHUNK_SIZE
    links_per_node_max: int = LINKS_PER_NODE_MAX
    size: int = 0
    block_count: int = 0
    root: Cid | None = None
    _pending: bytearray = field(default_factory=bytearray)
    _levels: list[list[_Child]] = field(default_factory=lambda: [[]])
    _leaf_count: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{CHUNK_SIZE}")
        if not 2 <= self.links_per_node_max <= 1024:
            raise ValueError("links_per_node_max must be in 2..1024")

    def add(self, data: bytes | memoryview) -> list[Block]:
        """Feed the next bytes of the file (any length)."""
        assert self.root is None, "add after finish"
        if not self._pending and isinstance(data, bytes) and len(data) == self.chunk_size:
            # read_chunks yields whole chunks: keep the bytes object instead of copying
            # 1 MiB (5% of a ``store add`` without fsync, cProfile).
            return self._add_leaf(data)
        out: list[Block] = []
        view = memoryview(data)
        if self._pending:
            take = min(len(view), self.chunk_size - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == self.chunk_size:
                out += self._add_leaf(bytes(self._pending))
                self._pending.clear()
        while len(view) >= self.chunk_size:
            out += self._add_leaf(bytes(view[:self.chunk_size]))
            view = view[self.chunk_size:]
        self._pending += view
        return out

    def add_chunk(self, chunk: bytes) -> list[Block]:
        """Feed one whole chunk (the fast path: no copy). Only the last may be short."""
        assert not self._pending and 0 < len(chunk) <= self.chunk_size, len(chunk)
        return self._add_leaf(chunk)

    def finish(self) -> list[Block]:
        """Flush the last chunk and every level; set ``root``."""
        assert self.root is None, "finish twice"
        out: list[Block] = []
        if self._pending or self._leaf_count == 0:
            out += self._add_leaf(bytes(self._pending))  # the empty file is one empty leaf
            self._pending.clear()
        top = max(index for index, level in enumerate(self._levels) if level)
        for index in range(top):
            if self._levels[index]:
                out += self._flush(index)
        if len(self._levels[top]) > 1:
            out += self._flush(top)
            top += 1
        assert len(self._levels[top]) == 1
        self.root = self._levels[top][0].cid
        return out

    def _add_leaf(self, chunk: bytes) -> list[Block]:
        leaf = Block(Cid.for_block(CODEC_RAW, chunk), chunk)
        self._leaf_count += 1
        self.size += len(chunk)
        self.block_count += 1
        out = [leaf]
        self._levels[0].append(_Child(leaf.cid, len(chunk), len(chunk)))
        index = 0
        while len(self._levels[index]) == self.links_per_node_max:
            out += self._flush(index)
            index += 1
        return out

    def _flush(self, index: int) -> list[Block]:
        """Write the parent of level ``index``'s links and link it one level up."""
        children = self._levels[index]
        assert children
        self._levels[index] = []
        if index + 1 == len(self._levels):
            self._levels.append([])
        unixfs = UnixFsData(type=UnixFsType.FILE, filesize=sum(c.filesize for c in children),
                            blocksizes=tuple(c.filesize for c in children))
        links = tuple(PBLink(hash=c.cid, name="", tsize=c.tsize) for c in children)
        data = encode_node(PBNode(links=links, data=encode_unixfs(unixfs)))
        block = Block(Cid.for_block(CODEC_DAG_PB, data), data)
        self.block_count += 1
        tsize = len(data) + sum(c.tsize for c in children)
        self._levels[index + 1].append(_Child(block.cid, tsize, unixfs.filesize or 0))
        return [block]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddResult:
    root: Cid
    size: int
    block_count: int


def read_chunks(stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Whole chunks from a binary stream (short reads are refilled); the last may be short."""
    while True:
        chunk = stream.read(chunk_size)
        while chunk and len(chunk) < chunk_size:
            more = stream.read(chunk_size - len(chunk))
            if not more:
                break
            chunk += more
        if not chunk:
            return
        yield chunk
        if len(chunk) < chunk_size:
            return


def add_chunks(chunks: Iterable[bytes], put: Callable[[Block], None], *,
               chunk_size: int = CHUNK_SIZE,
               links_per_node_max: int = LINKS_PER_NODE_MAX) -> AddResult:
    """Build the DAG of a stream of byte pieces, handing each block to ``put`` in order."""
    builder = FileBuilder(chunk_size=chunk_size, links_per_node_max=links_per_node_max)
    for piece in chunks:
        for block in builder.add(piece):
            put(block)
    for block in builder.finish():
        put(block)
    assert builder.root is not None
    return AddResult(root=builder.root, size=builder.size, block_count=builder.block_count)


def add_path(path: str | Path, put: Callable[[Block], None], *,
             chunk_size: int = CHUNK_SIZE,
             links_per_node_max: int = LINKS_PER_NODE_MAX) -> AddResult:
    """Add a file from disk, reading one chunk at a time."""
    with open(path, "rb") as stream:
        return add_chunks(read_chunks(stream, chunk_size), put, chunk_size=chunk_size,
                          links_per_node_max=links_per_node_max)


def build_bytes(data: bytes, *, chunk_size: int = CHUNK_SIZE,
                links_per_node_max: int = LINKS_PER_NODE_MAX) -> tuple[Cid, list[Block]]:
    """The root and every block of an in-memory file (tests and small objects)."""
    blocks: list[Block] = []
    result = add_chunks([data], blocks.append, chunk_size=chunk_size,
                        links_per_node_max=links_per_node_max)
    return result.root, blocks


# -- reading ------------------------------------------------------------------------------

BlockGetter = Callable[[Cid], bytes]


def links_of(cid: Cid, block: bytes | memoryview) -> tuple[Cid, ...]:
    """The CIDs a block links to: none for raw, the PBLinks' hashes for dag-pb."""
    if cid.codec == CODEC_RAW:
        return ()
    return tuple(link.hash for link in decode_node(block).links)


def _get_verified(get_block: BlockGetter, cid: Cid) -> bytes:
    data = get_block(cid)
    if len(data) > BLOCK_SIZE_MAX:
        raise InvalidDagError(f"{cid}: block of {len(data)} bytes exceeds {BLOCK_SIZE_MAX}")
    if not cid.matches(data):
        raise CorruptBlockError(cid)
    return data


def _file_node(cid: Cid, block: bytes) -> tuple[bytes, tuple[PBLink, ...], tuple[int, ...]]:
    """(inline data, links, child sizes) of a UnixFS file node, checked for consistency."""
    node = decode_node(block)
    if node.data is None:
        raise InvalidDagError(f"{cid}: dag-pb node without UnixFS data")
    unixfs = decode_unixfs(node.data)
    if unixfs.type not in (UnixFsType.FILE, UnixFsType.RAW):
        raise InvalidDagError(f"{cid}: UnixFS {unixfs.type.name} is not a file")
    inline = unixfs.data or b""
    if len(unixfs.blocksizes) != len(node.links):
        raise InvalidDagError(f"{cid}: {len(node.links)} links but "
                              f"{len(unixfs.blocksizes)} blocksizes")
    total = len(inline) + sum(unixfs.blocksizes)
    if unixfs.filesize is not None and unixfs.filesize != total:
        raise InvalidDagError(f"{cid}: filesize {unixfs.filesize} != data + blocksizes {total}")
    return inline, node.links, unixfs.blocksizes


def file_size(root: Cid, get_block: BlockGetter) -> int:
    """The size of the file under ``root``, from its root block alone."""
    block = _get_verified(get_block, root)
    if root.codec == CODEC_RAW:
        return len(block)
    inline, _, sizes = _file_node(root, block)
    return len(inline) + sum(sizes)


def iter_file(root: Cid, get_block: BlockGetter, *,
              size_max: int | None = None) -> Iterator[bytes]:
    """Yield the bytes of the file under ``root`` in order, verifying every block.

    ``size_max`` refuses a file that says (or turns out) to be larger than the caller wants.
    """
    # Each stack entry: (cid, size the parent declared or None for the root, depth).
    stack: list[tuple[Cid, int | None, int]] = [(root, None, 0)]
    emitted = 0
    while stack:
        cid, expected, depth = stack.pop()
        if depth > DAG_DEPTH_MAX:
            raise InvalidDagError(f"{root}: DAG deeper than {DAG_DEPTH_MAX}")
        block = _get_verified(get_block, cid)
        if cid.codec == CODEC_RAW:
            inline, links, sizes = block, (), ()
        else:
            inline, links, sizes = _file_node(cid, block)
        declared = len(inline) + sum(sizes)
        if expected is not None and declared != expected:
            raise InvalidDagError(f"{cid}: holds {declared} bytes, parent says {expected}")
        if expected is None and size_max is not None and declared > size_max:
            raise InvalidDagError(f"{root}: file of {declared} bytes exceeds {size_max}")
        if inline:
            emitted += len(inline)
            yield bytes(inline)
        for link, size in zip(reversed(links), reversed(sizes), strict=True):
            stack.append((link.hash, size, depth + 1))
    assert size_max is None or emitted <= size_max


def read_file(root: Cid, get_block: BlockGetter, *, size_max: int = 64 * 1024 * 1024) -> bytes:
    """The whole file in memory (small files and tests); see ``iter_file`` to stream."""
    return b"".join(iter_file(root, get_block, size_max=size_max))


def iter_dag(root: Cid, get_block: BlockGetter, *,
             blocks_max: int = DAG_BLOCKS_MAX) -> Iterator[Block]:
    """Every distinct block of the DAG under ``root``, depth-first pre-order, verified.

    The order is ``ipfs dag export``'s; a block linked twice (equal chunks) comes once."""
    seen: set[Cid] = set()
    stack: list[tuple[Cid, int]] = [(root, 0)]
    while stack:
        cid, depth = stack.pop()
        if cid in seen:
            continue
        if depth > DAG_DEPTH_MAX:
            raise InvalidDagError(f"{root}: DAG deeper than {DAG_DEPTH_MAX}")
        if len(seen) >= blocks_max:
            raise InvalidDagError(f"{root}: DAG has more than {blocks_max} blocks")
        seen.add(cid)
        block = _get_verified(get_block, cid)
        yield Block(cid, block)
        stack.extend((child, depth + 1) for child in reversed(links_of(cid, block)))
