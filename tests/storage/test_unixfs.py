"""UnixFS DAGs: our roots equal ipfs-unixfs-importer's; the reader checks what it reads."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.cid import CODEC_DAG_PB, CODEC_RAW, Cid
from storage.dagpb import (
    PBLink,
    PBNode,
    UnixFsData,
    UnixFsType,
    decode_node,
    encode_node,
    encode_unixfs,
)
from storage.errors import CorruptBlockError, InvalidDagError
from storage.unixfs import (
    CHUNK_SIZE,
    Block,
    FileBuilder,
    add_chunks,
    add_path,
    build_bytes,
    file_size,
    iter_dag,
    read_chunks,
    read_file,
)
from tests.storage.helpers import pattern, unixfs_cases

CASES = unixfs_cases()


def getter(blocks: list[Block]) -> Callable[[Cid], bytes]:
    table = {block.cid: block.data for block in blocks}
    return table.__getitem__


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_root_cid_equals_ipfs_unixfs_importer(case: dict) -> None:
    data = pattern(case["size"], case["seed"])
    root, blocks = build_bytes(data, chunk_size=case["chunk_size"],
                               links_per_node_max=case["links_per_node_max"])
    assert str(root) == case["root"]
    assert len({block.cid for block in blocks}) == case["blocks"]
    if case["root_block_hex"] is not None:
        assert getter(blocks)(root).hex() == case["root_block_hex"]
    assert read_file(root, getter(blocks)) == data
    assert file_size(root, getter(blocks)) == len(data)


def test_default_parameters_are_the_ipfs_add_flags_of_the_issue() -> None:
    case = next(c for c in CASES if c["name"] == "three-and-a-half-chunks")
    assert case["chunk_size"] == CHUNK_SIZE == 1024 * 1024
    root, _ = build_bytes(pattern(case["size"], case["seed"]))
    assert str(root) == case["root"]


def test_one_block_file_and_empty_file_are_their_raw_leaf() -> None:
    for data in (b"", b"x", bytes(CHUNK_SIZE)):
        root, blocks = build_bytes(data)
        assert root == Cid.for_block(CODEC_RAW, data)
        assert len(blocks) == 1
    assert str(build_bytes(b"")[0]) == "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 700), max_size=12))
def test_piece_boundaries_never_change_the_root(cuts: list[int]) -> None:
    data = pattern(2000, "pieces")
    reference, _ = build_bytes(data, chunk_size=100, links_per_node_max=3)
    builder = FileBuilder(chunk_size=100, links_per_node_max=3)
    offset = 0
    for cut in cuts:
        builder.add(data[offset:offset + cut])
        offset = min(len(data), offset + cut)
    builder.add(data[offset:])
    builder.finish()
    assert builder.root == reference
    assert builder.size == len(data)


def test_add_path_streams_a_file_and_matches_the_fixture(tmp_path) -> None:
    case = next(c for c in CASES if c["name"] == "three-levels-256")
    path = tmp_path / "file.bin"
    path.write_bytes(pattern(case["size"], case["seed"]))
    seen: list[Block] = []
    result = add_path(path, seen.append, chunk_size=256)
    assert str(result.root) == case["root"]
    assert result.size == case["size"]
    assert seen[-1].cid == result.root  # parents come after the leaves they link
    assert result.block_count == len(seen)


def test_builder_holds_no_more_than_a_chunk_and_one_node_per_level() -> None:
    builder = FileBuilder(chunk_size=16, links_per_node_max=4)
    for _ in range(1000):
        builder.add(b"y" * 16)
        assert len(builder._pending) < 16
        assert all(len(level) < 4 for level in builder._levels)
    assert len(builder._levels) <= 6


def test_read_chunks_refills_short_reads() -> None:
    class Trickle(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            take = min(3, size)
            piece, self.data = self.data[:take], self.data[take:]
            return piece

    chunks = list(read_chunks(Trickle(b"a" * 25), 10))  # type: ignore[arg-type]
    assert [len(chunk) for chunk in chunks] == [10, 10, 5]


def test_iter_dag_visits_each_distinct_block_once_in_export_order() -> None:
    case = next(c for c in CASES if c["name"] == "zeros-dedup")
    root, blocks = build_bytes(bytes(case["size"]), chunk_size=256, links_per_node_max=3)
    walked = list(iter_dag(root, getter(blocks)))
    assert walked[0].cid == root
    assert len(walked) == len({block.cid for block in blocks}) == case["blocks"]


def test_reader_refuses_a_block_that_does_not_match_its_cid() -> None:
    root, blocks = build_bytes(pattern(1000, "x"), chunk_size=100, links_per_node_max=3)
    table = {block.cid: block.data for block in blocks}
    leaf = next(block.cid for block in blocks if block.cid.codec == CODEC_RAW)
    table[leaf] = b"evil" + table[leaf][4:]
    with pytest.raises(CorruptBlockError):
        read_file(root, table.__getitem__)


def _node(blocksizes: tuple[int, ...], children: list[bytes], filesize: int | None = None,
          kind: UnixFsType = UnixFsType.FILE) -> tuple[Cid, dict[Cid, bytes]]:
    table = {Cid.for_block(CODEC_RAW, child): child for child in children}
    links = tuple(PBLink(hash=cid, name="", tsize=len(data)) for cid, data in table.items())
    data = encode_node(PBNode(links=links, data=encode_unixfs(
        UnixFsData(type=kind, filesize=filesize, blocksizes=blocksizes))))
    root = Cid.for_block(CODEC_DAG_PB, data)
    table[root] = data
    return root, table


def test_reader_refuses_nodes_inconsistent_with_their_children() -> None:
    lying_size, table = _node((5, 3), [b"aaaaa", b"bbbb"])
    with pytest.raises(InvalidDagError, match="parent says"):
        read_file(lying_size, table.__getitem__)
    wrong_count, table = _node((5,), [b"aaaaa", b"bbbb"])
    with pytest.raises(InvalidDagError, match="blocksizes"):
        read_file(wrong_count, table.__getitem__)
    wrong_total, table = _node((5, 4), [b"aaaaa", b"bbbb"], filesize=100)
    with pytest.raises(InvalidDagError, match="filesize"):
        read_file(wrong_total, table.__getitem__)
    directory, table = _node((5,), [b"aaaaa"], kind=UnixFsType.DIRECTORY)
    with pytest.raises(InvalidDagError, match="not a file"):
        read_file(directory, table.__getitem__)


def test_reader_refuses_a_file_larger_than_asked_before_fetching_it() -> None:
    root, blocks = build_bytes(pattern(3000, "big"), chunk_size=100, links_per_node_max=3)
    fetched: list[Cid] = []

    def get(cid: Cid) -> bytes:
        fetched.append(cid)
        return getter(blocks)(cid)

    with pytest.raises(InvalidDagError, match="exceeds"):
        read_file(root, get, size_max=2999)
    assert fetched == [root]


def test_reader_caps_the_depth_of_a_hostile_chain() -> None:
    table: dict[Cid, bytes] = {}
    leaf = b"z"
    child = Cid.for_block(CODEC_RAW, leaf)
    table[child] = leaf
    for _ in range(40):
        data = encode_node(PBNode(links=(PBLink(hash=child, name="", tsize=1),),
                                  data=encode_unixfs(UnixFsData(type=UnixFsType.FILE,
                                                                filesize=1, blocksizes=(1,)))))
        child = Cid.for_block(CODEC_DAG_PB, data)
        table[child] = data
    with pytest.raises(InvalidDagError, match="deeper"):
        read_file(child, table.__getitem__)


def test_reader_accepts_dag_pb_leaves_with_inline_data() -> None:
    """Older importers (``--raw-leaves=false``) put chunks in UnixFS nodes: still a file."""
    leaf = encode_node(PBNode(data=encode_unixfs(
        UnixFsData(type=UnixFsType.FILE, data=b"hello", filesize=5))))
    leaf_cid = Cid.for_block(CODEC_DAG_PB, leaf)
    raw = Cid.for_block(CODEC_RAW, b"abc")
    parent = encode_node(PBNode(
        links=(PBLink(hash=leaf_cid, name="", tsize=len(leaf)),
               PBLink(hash=raw, name="", tsize=3)),
        data=encode_unixfs(UnixFsData(type=UnixFsType.FILE, filesize=8, blocksizes=(5, 3)))))
    root = Cid.for_block(CODEC_DAG_PB, parent)
    table = {leaf_cid: leaf, raw: b"abc", root: parent}
    assert read_file(leaf_cid, table.__getitem__) == b"hello"
    assert read_file(root, table.__getitem__) == b"helloabc"
    assert decode_node(leaf).links == ()


def test_add_chunks_hands_blocks_in_dependency_order() -> None:
    blocks: list[Block] = []
    result = add_chunks([pattern(5000, "order")], blocks.append, chunk_size=100,
                        links_per_node_max=3)
    seen: set[Cid] = set()
    for block in blocks:
        if block.cid.codec == CODEC_DAG_PB:
            assert all(link.hash in seen for link in decode_node(block.data).links)
        seen.add(block.cid)
    assert blocks[-1].cid == result.root
