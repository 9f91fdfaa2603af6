"""The block store on real files and SQLite: atomic writes, pins, quota, GC, verify."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage import durable
from storage.blockstore import PUT_MANY_BLOCKS_MAX, BlockStore, VerifyReport
from storage.cid import raw_cid
from storage.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    LocalCommandError,
    QuotaExceededError,
)
from storage.unixfs import Block, build_bytes, read_file
from tests.storage.helpers import pattern

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now_ms = 0

    def __call__(self) -> int:
        self.now_ms += 1
        return self.now_ms


def block(data: bytes) -> Block:
    return Block(raw_cid(data), data)


def open_store(path: Path, quota_bytes: int = 64 * MiB, **options) -> BlockStore:
    return BlockStore(path, quota_bytes=quota_bytes, clock_ms=Clock(), fsync=False, **options)


def test_put_get_has_stat_ls(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        blocks = [block(bytes([i]) * (i + 1)) for i in range(20)]
        assert all(store.put(b) for b in blocks)
        assert not store.put(blocks[0])
        assert all(store.get(b.cid) == b.data for b in blocks)
        assert store.stat().block_count == 20
        assert store.stat().size_bytes == sum(len(b.data) for b in blocks)
        first = store.ls(limit=7)
        rest = store.ls(after=first[-1][0], limit=100)
        assert sorted(c for c, _ in first + rest) == sorted(b.cid for b in blocks)
        with pytest.raises(BlockNotFoundError):
            store.get(raw_cid(b"absent"))
        assert store.size_of(blocks[3].cid) == 4
    with open_store(tmp_path) as again:  # the index and the files survive a reopen
        assert again.get(blocks[5].cid) == blocks[5].data
        assert again.stat().size_bytes == sum(len(b.data) for b in blocks)


def test_put_refuses_bytes_that_are_not_the_cid(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        with pytest.raises(CorruptBlockError):
            store.put(Block(raw_cid(b"a"), b"b"))
        assert store.stat().block_count == 0


def test_blocks_fan_out_by_digest_and_files_hold_exact_bytes(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        b = block(b"hello")
        store.put(b)
        path = tmp_path / "blocks" / b.cid.digest[:1].hex() / str(b.cid)
        assert path.read_bytes() == b"hello"


def test_a_second_process_cannot_open_the_same_store(tmp_path: Path) -> None:
    with open_store(tmp_path):
        code = (
            "import sys; from storage.blockstore import BlockStore\n"
            "from storage.errors import LocalCommandError\n"
            f"try: BlockStore({str(tmp_path)!r}, quota_bytes=1 << 30)\n"
            "except LocalCommandError: sys.exit(7)\n"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=30)
        assert result.returncode == 7


def test_a_temp_file_left_by_a_crash_is_never_visible_and_is_removed(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        store.put(block(b"kept"))
    half = block(b"x" * 1000)
    (tmp_path / "tmp" / f"{half.cid}.123.0").write_bytes(half.data[:300])
    with open_store(tmp_path) as store:
        assert not store.has(half.cid)
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.verify().corrupt == ()


def test_corruption_on_disk_is_caught_on_read_and_by_verify(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        good, bad, gone = block(b"good"), block(b"bad" * 10), block(b"gone")
        for b in (good, bad, gone):
            store.put(b)
        bad_path = tmp_path / "blocks" / bad.cid.digest[:1].hex() / str(bad.cid)
        bad_path.write_bytes(b"rot" * 10)
        (tmp_path / "blocks" / gone.cid.digest[:1].hex() / str(gone.cid)).unlink()
        orphan = block(b"orphan")
        orphan_path = tmp_path / "blocks" / orphan.cid.digest[:1].hex() / str(orphan.cid)
        orphan_path.parent.mkdir(exist_ok=True)
        orphan_path.write_bytes(b"orphan")
        report = store.verify()
        assert report.corrupt == (str(bad.cid),)
        assert report.missing == (gone.cid,)
        assert report.adopted == (orphan.cid,)
        assert report.checked_count == 3
        assert not bad_path.exists()
        assert len(list((tmp_path / "quarantine").iterdir())) == 1
        assert store.get(orphan.cid) == b"orphan"
        assert store.stat().size_bytes == len(b"good") + len(b"orphan")
        # a block rotting after verify is caught on read and quarantined too
        good_path = tmp_path / "blocks" / good.cid.digest[:1].hex() / str(good.cid)
        good_path.write_bytes(b"GOOD")
        with pytest.raises(CorruptBlockError):
            store.get(good.cid)
        assert not store.has(good.cid)


def _add(store: BlockStore, data: bytes, **options) -> tuple:
    root, blocks = build_bytes(data, **options)
    for b in blocks:
        store.put(b)
    return root, blocks


def test_recursive_pins_protect_the_whole_dag_from_gc(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        pinned_root, pinned_blocks = _add(
            store, pattern(3000, "p"), chunk_size=100, links_per_node_max=3
        )
        loose_root, loose_blocks = _add(
            store, pattern(3000, "q"), chunk_size=100, links_per_node_max=3
        )
        store.pin(pinned_root)
        report = store.gc()
        assert report.removed_count == len(loose_blocks)
        assert report.pinned_count == len(pinned_blocks)
        assert read_file(pinned_root, store.get) == pattern(3000, "p")
        assert not store.has(loose_root)
        assert store.pins() == [pinned_root]
        assert store.unpin(pinned_root)
        store.gc()
        assert store.stat().block_count == 0


def test_missing_blocks_lists_what_a_partial_dag_lacks(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        root, blocks = build_bytes(pattern(1000, "m"), chunk_size=100, links_per_node_max=3)
        leaves = [b for b in blocks if b.cid.codec == 0x55]
        for b in blocks:
            if b not in leaves[:2]:
                store.put(b)
        assert sorted(store.missing_blocks(root)) == sorted(b.cid for b in leaves[:2])
        assert store.missing_blocks(raw_cid(b"nothing")) == [raw_cid(b"nothing")]


def test_quota_collects_least_recently_used_unpinned_blocks_first(tmp_path: Path) -> None:
    size = 256 * 1024
    with open_store(tmp_path, quota_bytes=10 * size, gc_low_watermark=1.0) as store:
        blocks = [block(bytes([i]) * size) for i in range(10)]
        for b in blocks:
            store.put(b)
        store.pin(blocks[0].cid)
        store.get(blocks[1].cid)  # recently used: kept over blocks 2..9
        store.put(block(b"n" * size))
        assert store.has(blocks[0].cid) and store.has(blocks[1].cid)
        assert not store.has(blocks[2].cid)
        assert store.stat().size_bytes <= store.quota_bytes


def test_quota_full_of_pinned_blocks_refuses_new_ones(tmp_path: Path) -> None:
    size = 1024 * 1024
    with open_store(tmp_path, quota_bytes=2 * size + 10) as store:
        for i in range(2):
            b = block(bytes([i]) * size)
            store.put(b)
            store.pin(b.cid)
        with pytest.raises(QuotaExceededError):
            store.put(block(b"z" * size))
        assert store.stat().block_count == 2


def test_bad_quota_is_a_local_error(tmp_path: Path) -> None:
    with pytest.raises(LocalCommandError):
        BlockStore(tmp_path, quota_bytes=10)


# -- batches (put_many, batch) --------------------------------------------------------


def block_files(root: Path) -> list[Path]:
    return sorted((root / "blocks").glob("*/*"))


def test_put_many_skips_blocks_already_stored_or_repeated_in_the_batch(
    tmp_path: Path,
) -> None:
    with open_store(tmp_path) as store:
        old, new, other = block(b"old"), block(b"new" * 100), block(b"other" * 7)
        assert store.put(old)
        assert store.put_many([old, new, new, other, old]) == [False, True, False, True, False]
        assert store.stat().block_count == 3
        assert store.stat().size_bytes == sum(len(b.data) for b in (old, new, other))
        assert len(block_files(tmp_path)) == 3
        assert store.get(new.cid) == new.data
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.put_many([]) == []


def test_put_many_refuses_a_batch_with_bytes_that_are_not_their_cid(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        good = block(b"good")
        with pytest.raises(CorruptBlockError):
            store.put_many([good, Block(raw_cid(b"a"), b"b")])
        assert store.stat().block_count == 0 and store.stat().size_bytes == 0
        assert block_files(tmp_path) == [] and list((tmp_path / "tmp").iterdir()) == []


def _fill(store: BlockStore, blocks: list[Block], *, batched: bool) -> None:
    """Pins first (they call the clock too), then every block, one way or the other."""
    store.pin(blocks[0].cid)
    store.pin(blocks[5].cid)
    if batched:
        with store.batch() as batch:
            for b in blocks:
                batch.put(b)
    else:
        for b in blocks:
            store.put(b)


@pytest.mark.parametrize("fsync", [False, True])  # True: through the writer thread
def test_a_batch_accounts_and_collects_exactly_as_one_put_after_another(
    tmp_path: Path, fsync: bool
) -> None:
    """Past the quota a batch commits, then collects: the same blocks survive."""
    size = 300 * 1024
    blocks = [block(bytes([i % 23]) * (size - i)) for i in range(80)]  # 24 MB, 4 MiB quota
    blocks += blocks[:10]  # repeats, collected meanwhile or not
    stats, listings = [], []
    for batched in (False, True):
        directory = tmp_path / str(batched)
        with BlockStore(directory, quota_bytes=4 * MiB, clock_ms=Clock(), fsync=fsync,
                        gc_low_watermark=0.75) as store:
            _fill(store, blocks, batched=batched)
            stats.append(store.stat())
            listings.append(store.ls(limit=1000))
            assert store.has(blocks[0].cid) and store.has(blocks[5].cid)  # pinned
            assert store.stat().block_count < 80  # it did collect
            assert store.stat().size_bytes <= store.quota_bytes
            assert store.stat().size_bytes == sum(p.stat().st_size
                                                  for p in block_files(directory))
            assert store.verify().missing == ()
    assert stats[0] == stats[1]
    assert listings[0] == listings[1]


def test_a_batch_commits_every_put_many_blocks_max_blocks(tmp_path: Path) -> None:
    with open_store(tmp_path) as store, store.batch() as batch:
        blocks = [block(i.to_bytes(4, "big")) for i in range(PUT_MANY_BLOCKS_MAX + 1)]
        for b in blocks:
            assert batch.put(b)
        assert all(store.has(b.cid) for b in blocks[:-1])  # committed at the 64th
        assert not store.has(blocks[-1].cid)  # staged: written, not yet visible
        assert len(list((tmp_path / "tmp").iterdir())) == 1
    with open_store(tmp_path) as again:
        assert again.stat().block_count == PUT_MANY_BLOCKS_MAX + 1


def test_an_error_inside_a_batch_discards_what_it_staged(tmp_path: Path) -> None:
    size = MiB
    with open_store(tmp_path, quota_bytes=2 * size + 10) as store:
        with pytest.raises(RuntimeError), store.batch() as batch:
            batch.put(block(b"a" * size))
            batch.put(block(b"b" * size))
            raise RuntimeError("the source file could not be read")
        assert store.stat().block_count == 0 and store.stat().size_bytes == 0
        assert block_files(tmp_path) == [] and list((tmp_path / "tmp").iterdir()) == []
        # what it staged no longer counts against the quota
        assert store.put_many([block(b"c" * size), block(b"d" * size)]) == [True, True]


def test_a_batch_into_a_quota_full_of_pinned_blocks_is_refused(tmp_path: Path) -> None:
    size = MiB
    with open_store(tmp_path, quota_bytes=2 * size + 10) as store:
        pinned = [block(bytes([i]) * size) for i in range(2)]
        store.put_many(pinned)
        for b in pinned:
            store.pin(b.cid)
        with pytest.raises(QuotaExceededError):
            store.put_many([block(b"small"), block(b"z" * size)])
        assert store.stat().block_count == 2
        assert list((tmp_path / "tmp").iterdir()) == []


def test_a_block_stored_by_another_put_during_a_batch_is_indexed_once(tmp_path: Path) -> None:
    with open_store(tmp_path) as store, store.batch() as batch:
        shared = block(b"fetched and added at once")
        assert batch.put(shared)
        assert store.put(shared)  # the exchange stores it before the batch commits
    with open_store(tmp_path) as again:
        assert again.stat().block_count == 1
        assert again.stat().size_bytes == len(shared.data)
        assert again.get(shared.cid) == shared.data


def test_the_fan_out_directories_exist_from_the_open(tmp_path: Path) -> None:
    with open_store(tmp_path):
        names = sorted(p.name for p in (tmp_path / "blocks").iterdir())
        assert names == [f"{i:02x}" for i in range(256)]


@pytest.mark.parametrize("early_writeback", [True, False])
def test_a_durable_batch_stores_with_or_without_early_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_writeback: bool
) -> None:
    """``sync_file_range`` is only a hint: without it (not Linux) the fsyncs alone remain."""
    if not early_writeback:
        monkeypatch.setattr(durable, "_sync_file_range", None)
    blocks = [block(bytes([i]) * 5000) for i in range(70)]
    with BlockStore(tmp_path, quota_bytes=64 * MiB, fsync=True) as store:
        assert store.put_many(blocks) == [True] * 70
    with open_store(tmp_path) as again:
        assert again.verify().checked_count == 70
        assert all(again.get(b.cid) == b.data for b in blocks)


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("file-batch-writer")]


def test_a_durable_batch_indexes_a_group_once_the_writer_has_published_it(
    tmp_path: Path,
) -> None:
    """Rule 7: a durable batch hands each group to its writer thread; a group is indexed
    only after the writer published it (data and names durable), at the latest when the
    next group is handed off or the batch ends, and the thread ends with the batch."""
    blocks = [block(bytes([i]) * 3000) for i in range(9)]
    with BlockStore(tmp_path, quota_bytes=64 * MiB, fsync=True, commit_blocks_max=4) as store:
        with store.batch() as batch:
            for b in blocks[:8]:
                assert batch.put(b)
            assert writer_threads()  # it wrote from the second block on
            assert all(store.has(b.cid) for b in blocks[:4])  # indexed at the 2nd hand-off
            assert batch.put(blocks[8])
        assert writer_threads() == []
        assert all(store.has(b.cid) for b in blocks)
        assert list((tmp_path / "tmp").iterdir()) == []
        assert store.stat().size_bytes == sum(len(b.data) for b in blocks)
        assert store.verify() == VerifyReport(checked_count=9, corrupt=(), missing=(),
                                              adopted=())


def test_a_collection_never_removes_a_block_that_a_batch_is_writing(tmp_path: Path) -> None:
    """A batch publishes without the store's lock (rule 7), so a collection between a
    rename and its index row must not remove the file (the row would then have none)."""
    with open_store(tmp_path) as store, store.batch() as batch:
        shared = block(b"added here, fetched by the exchange meanwhile")
        assert batch.put(shared)  # staged by the batch, not yet indexed
        assert store.put(shared)  # indexed and unpinned: a candidate for collection
        report = store.gc()
        assert report.removed_count == 0
        assert store.has(shared.cid)
        assert len(block_files(tmp_path)) == 1


WRITE_FAILS = """
import json, resource, signal, sys
from pathlib import Path
from storage.blockstore import BlockStore
from storage.cid import raw_cid
from storage.unixfs import Block
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))  # writes past: EFBIG
root = Path(sys.argv[1])
blocks = [Block(raw_cid(data), data) for data in
          (b"a" * 1000, b"b" * 1000, b"c" * 1000, b"d" * (1 << 20), b"e" * 1000)]
store = BlockStore(root, quota_bytes=64 << 20, fsync=True, commit_blocks_max=2)
try:
    with store.batch() as batch:
        for b in blocks:
            batch.put(b)
    error = None
except OSError as caught:
    error = caught.errno
print(json.dumps({
    "error": error,
    "indexed": [store.has(b.cid) for b in blocks],
    "files": sorted(p.name for p in (root / "blocks").glob("*/*")),
    "temp": sorted(p.name for p in (root / "tmp").iterdir()),
    "names": [str(b.cid) for b in blocks],
    "size_bytes": store.stat().size_bytes,
}))
"""


def test_a_write_that_fails_in_the_writer_thread_publishes_nothing_of_its_group(
    tmp_path: Path,
) -> None:
    """A real EFBIG (RLIMIT_FSIZE) in the background write of a 1 MiB block leaves a
    partial temp file: it must never be renamed, its group never indexed, the error must
    reach the caller, and the group published before it stays (complete and durable)."""
    run = subprocess.run([sys.executable, "-c", WRITE_FAILS, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(run.stdout)
    assert result["error"] == errno.EFBIG
    assert result["indexed"] == [True, True, False, False, False]
    assert result["files"] == sorted(result["names"][:2])
    assert result["temp"] == []
    assert result["size_bytes"] == 2000


def lane_file(store: BlockStore, data: bytes, name: str) -> tuple[Block, str]:
    """A block written under the store's tmp/ as a transfer lane writes it."""
    (store.root / "tmp" / name).write_bytes(data)
    return block(data), name


@pytest.mark.parametrize("fsync", [False, True])
def test_a_batch_adopts_lane_files_as_its_own_blocks(tmp_path: Path, fsync: bool) -> None:
    """More than one group (the writer thread's path with fsync), a duplicate inside the
    batch and one already stored: each file ends as a block or is removed."""
    with BlockStore(tmp_path, quota_bytes=64 * MiB, clock_ms=Clock(), fsync=fsync) as store:
        stored = block(b"stored before")
        store.put(stored)
        files = [lane_file(store, pattern(1000 + i, f"lane{i}"), f"f{i}")
                 for i in range(PUT_MANY_BLOCKS_MAX + 5)]
        again = lane_file(store, files[0][0].data, "again")
        old = lane_file(store, stored.data, "old")
        with store.batch(hashed_here=True) as batch:
            assert all(batch.adopt(b.cid, len(b.data), name) for b, name in files)
            assert not batch.adopt(again[0].cid, len(again[0].data), "again")
            assert not batch.adopt(old[0].cid, len(old[0].data), "old")
        for adopted, _name in files:
            assert store.get(adopted.cid) == adopted.data
        assert store.stat().block_count == len(files) + 1
        assert list((tmp_path / "tmp").iterdir()) == []


def test_only_a_batch_of_hashed_blocks_adopts_a_file(tmp_path: Path) -> None:
    with open_store(tmp_path) as store:
        lying, name = lane_file(store, b"not what the cid says", "f")
        with pytest.raises(LocalCommandError), store.batch() as batch:
            batch.adopt(raw_cid(b"other"), len(lying.data), name)
        assert not store.has(raw_cid(b"other"))
