"""The block store: verified blocks as files, indexed in SQLite, pinned, quota'd, collected.

Rules:
1. Blocks are written in batches (``batch``; ``put_many`` is one batch, ``put`` a batch of
   one) through a ``storage.durable.FileBatch``: each block's file is written to ``tmp/``
   under a unique name as it is put (rule 7); every ``commit_blocks_max`` blocks and when the
   batch ends, the staged files are renamed to ``blocks/<xx>/<cid>`` (``xx`` = the first
   digest byte in hex: the CID string's leading characters encode version and codec and
   are the same for every block, so the fan-out uses the digest) and only then indexed,
   in one SQLite transaction per commit. With ``fsync`` (the default) every file's data is
   durable before its rename, and every rename is durable before the commit's rows are
   written and before the commit returns (so before ``put`` returns and before ``store
   add`` pins its root). A crash leaves at worst temp files (removed at the next open) or
   files without an index row (adopted by ``verify``); never a partial block under a real
   name, since a rename is atomic, and never a row whose file a crash could take back.
   A batch of hashed blocks may also adopt a file that a transfer lane of the node hashed
   and wrote under ``tmp/`` (``BlockBatch.adopt``): from there it goes the way of a put.
2. Checked before the write and after the read (paired assertions, STYLE.md): ``put``
   refuses bytes that do not hash to their CID; ``get`` rehashes and quarantines a block
   that the disk corrupted, then raises ``CorruptBlockError``.
3. Pins are recursive and name roots: every block reachable from a pinned root *through
   blocks present in the store* is pinned. Garbage collection removes only unpinned
   blocks, least recently accessed first; it never removes a pinned one. The shell pins a
   root before fetching it so the partial DAG is protected while it arrives.
4. ``size_bytes`` never exceeds ``quota_bytes``; blocks staged by open batches count
   against it too. A put that would pass the quota first commits its batch (staged blocks
   cannot be collected; committed ones can), then collects unpinned blocks down to
   ``gc_low_watermark`` of the quota, and raises ``QuotaExceededError`` if pinned data
   leaves no room. Blocks already stored (or repeated within the batch) are not written
   again and count once: a batch accounts exactly as one ``put`` after another.
5. One process owns a store directory (an exclusive ``flock`` on ``lock``); within it, a
   lock serialises the methods, so the shell may call them from worker threads. A batch
   takes it for each put and to index each group, not while hashing nor while files are
   fsynced and renamed, so reads and the exchange's puts go on during a ``store add``.
   SQLite runs in WAL mode with ``synchronous=NORMAL``: a power cut may lose the last
   index rows, never a block file, and ``verify`` re-adopts such files.
6. The 256 fan-out directories are created (and made durable) when the store opens, so a
   write never pays a ``mkdir`` nor has to make a new directory's name durable.
7. With ``fsync``, a batch writes in the background from its second block on: a
   ``storage.durable.BackgroundWriter`` (one thread per batch, ended with it) creates,
   writes and fsyncs the files and publishes each group of ``commit_blocks_max`` while
   the caller hashes the next blocks. Why the crash invariant of rule 1 still holds: the
   writer publishes a group (every file fsynced, then renamed, then every directory
   fsynced) only after all of that group's writes, in one FIFO thread, and never after a
   failed write; the caller indexes a group only after ``wait_published`` returned for
   it, and the batch returns (so ``store add`` pins its root) only after the last group
   is indexed. Publishing runs without the store's lock, so a collection skips every
   block that an open batch is writing (``_writing``): otherwise it could remove a file
   between its rename and its row. A batch of one (``put``) writes in the caller's thread
   as before. Measured (BENCHMARKS.md, 2026-11-26): ``store add`` of 96 MiB with fsync
   went from 0.46-0.55 to 0.58-0.66 of sha256, four rounds alternating in the same minutes.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storage.cid import CODEC_DAG_PB, Cid
from storage.dagpb import BLOCK_SIZE_MAX
from storage.durable import FILES_MAX, BackgroundWriter, FileBatch, fsync_directory
from storage.errors import (
    BlockNotFoundError,
    CorruptBlockError,
    InvalidDataError,
    LocalCommandError,
    QuotaExceededError,
    StorageError,
)
from storage.unixfs import DAG_BLOCKS_MAX, DAG_DEPTH_MAX, Block, links_of

LS_LIMIT_MAX = 10_000
PUT_MANY_BLOCKS_MAX = 32
"""A batch commits (with fsync: hands a group to its writer, rule 7) every 32 blocks: at
most as many temp files and open descriptors (fsync on) per group, two groups per batch.
Measured on the 2-core VM (100 x 1 MiB files, fsync on, early writeback, one thread):
groups of 16 and 64 wrote at 1220-1300 and 1220-1575 MB/s against 265-770 MB/s for one
fsynced file and directory at a time without early writeback. With the writer thread
(``store add`` of 96 MiB, fsync on, 2026-11-26, alternating): 32 gave 0.53-0.76 of sha256
in 10 processes, 64 gave 0.33-0.68 in 10 (the last group's publish is not overlapped with
hashing, and a smaller group shortens it), 16 gave 0.39-0.61 in 4 (more journal commits)."""
assert PUT_MANY_BLOCKS_MAX <= FILES_MAX
FANOUT_COUNT = 256  # one directory per value of the digest's first byte (rule 1)
GC_LOW_WATERMARK = 0.9
"""An automatic collection frees down to 90% of the quota, so a store that runs full does
not walk its pins again on every following ``put``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    cid BLOB PRIMARY KEY, size INTEGER NOT NULL, last_access_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_access ON blocks (last_access_ms);
CREATE TABLE IF NOT EXISTS pins (cid BLOB PRIMARY KEY, pinned_at_ms INTEGER NOT NULL)
    WITHOUT ROWID;
"""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatistics:
    block_count: int
    size_bytes: int
    quota_bytes: int
    pinned_root_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    removed_count: int
    freed_bytes: int
    pinned_count: int  # blocks found reachable from pins (kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    checked_count: int
    corrupt: tuple[str, ...]  # file names quarantined (a CID string, or a stray name)
    missing: tuple[Cid, ...]  # index rows whose file was gone (rows dropped)
    adopted: tuple[Cid, ...]  # good files that had no index row (rows added)


@dataclass(slots=True)
class BlockBatch:
    """One batch of puts in progress (``BlockStore.batch``): the blocks staged since the
    last hand-off, and the previous group of them while it is being published (rule 7)."""

    store: BlockStore
    files: FileBatch
    hashed_here: bool
    sizes: dict[Cid, int] = field(default_factory=dict)  # staged since the last hand-off
    writer: BackgroundWriter = field(default_factory=BackgroundWriter)
    publishing: dict[Cid, int] = field(default_factory=dict)  # handed to the writer
    publishing_files: FileBatch | None = None

    def put(self, block: Block) -> bool:
        """Check and write ``block`` now, index it with the batch; True if it was new."""
        return self.store._stage(self, block)

    def adopt(self, cid: Cid, size: int, temp_name: str) -> bool:
        """Index with the batch the block ``cid`` that a transfer lane of this node hashed
        and wrote to ``tmp/<temp_name>`` (``hashed_here`` batches only); True if it was
        new. The file is the store's from now on: removed if the block is already here."""
        return self.store._adopt(self, cid, size, temp_name)


class BlockStore:
    """Blocks under ``root`` (see the module rules); open one per directory per process."""

    def __init__(self, root: str | Path, *, quota_bytes: int,
                 clock_ms: Callable[[], int] = wall_clock_ms, fsync: bool = True,
                 gc_low_watermark: float = GC_LOW_WATERMARK,
                 commit_blocks_max: int = PUT_MANY_BLOCKS_MAX) -> None:
        if quota_bytes < BLOCK_SIZE_MAX:
            raise LocalCommandError(f"quota_bytes must be >= {BLOCK_SIZE_MAX} (one block)")
        if not 0 < gc_low_watermark <= 1:
            raise LocalCommandError("gc_low_watermark must be in (0, 1]")
        if not 1 <= commit_blocks_max <= FILES_MAX:
            raise LocalCommandError(f"commit_blocks_max must be in 1..{FILES_MAX}")
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self._clock_ms = clock_ms
        self._fsync = fsync
        self._low_watermark = gc_low_watermark
        self._commit_blocks_max = commit_blocks_max
        self._lock = threading.RLock()
        self._names = itertools.count()
        self._make_directories()
        self._lock_file = open(self.root / "lock", "a+b")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise LocalCommandError(f"block store {self.root} is open in another process")\
                from None
        for stale in (self.root / "tmp").iterdir():  # rule 1: a crash left it half written
            stale.unlink()
        self._db = sqlite3.connect(self.root / "index.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._staged_bytes = 0  # written by open batches, not yet indexed (rule 4)
        self._writing: dict[Cid, int] = {}  # CID -> open batches staging it (rule 7)
        self._size_bytes = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM blocks").fetchone()[0]

    def _make_directories(self) -> None:
        """The store's directories and the fan-out under ``blocks/``, durable (rule 6)."""
        self.root.mkdir(parents=True, exist_ok=True)
        made: list[Path] = []  # directories that gained a name
        for sub in ("blocks", "tmp", "quarantine"):
            if not (self.root / sub).is_dir():
                (self.root / sub).mkdir()
                made.append(self.root)
        blocks = self.root / "blocks"
        present = {entry.name for entry in os.scandir(blocks)}
        for index in range(FANOUT_COUNT):
            if f"{index:02x}" not in present:
                (blocks / f"{index:02x}").mkdir()
                made.append(blocks)
        if self._fsync:
            for directory in sorted(set(made)):
                fsync_directory(directory)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths ------------------------------------------------------------------------

    def _path(self, cid: Cid, name: str | None = None) -> Path:
        """Where ``cid``'s file lives; ``name`` is ``str(cid)`` when the caller has it."""
        return self.root / "blocks" / cid.digest[:1].hex() / (name or str(cid))

    # -- reads ------------------------------------------------------------------------

    def has(self, cid: Cid) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM blocks WHERE cid = ?",
                                    (cid.to_bytes(),)).fetchone() is not None

    def size_of(self, cid: Cid) -> int | None:
        with self._lock:
            row = self._db.execute("SELECT size FROM blocks WHERE cid = ?",
                                   (cid.to_bytes(),)).fetchone()
            return None if row is None else row[0]

    def get(self, cid: Cid) -> bytes:
        """The block's bytes, rehashed (rule 2); records the access for the LRU order."""
        with self._lock:
            data = self._read(cid)
            self._db.execute("UPDATE blocks SET last_access_ms = ? WHERE cid = ?",
                             (self._clock_ms(), cid.to_bytes()))
            return data

    def _read(self, cid: Cid) -> bytes:
        if not self.has(cid):
            raise BlockNotFoundError(cid)
        try:
            data = self._path(cid).read_bytes()
        except FileNotFoundError:
            self._drop_row(cid)
            raise BlockNotFoundError(cid) from None
        if not cid.matches(data):
            self._quarantine(self._path(cid))
            self._drop_row(cid)
            raise CorruptBlockError(cid, "stored block is corrupt; quarantined")
        return data

    def ls(self, *, after: Cid | None = None, limit: int = 1000) -> list[tuple[Cid, int]]:
        """(cid, size) in CID byte order, ``limit`` at a time, resuming ``after`` a CID."""
        limit = max(1, min(limit, LS_LIMIT_MAX))
        start = after.to_bytes() if after else b""
        with self._lock:
            rows = self._db.execute("SELECT cid, size FROM blocks WHERE cid > ? ORDER BY cid "
                                    "LIMIT ?", (start, limit)).fetchall()
        return [(Cid.from_bytes(cid), size) for cid, size in rows]

    def stat(self) -> StoreStatistics:
        with self._lock:
            count = self._db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
            pins = self._db.execute("SELECT COUNT(*) FROM pins").fetchone()[0]
            return StoreStatistics(block_count=count, size_bytes=self._size_bytes,
                                   quota_bytes=self.quota_bytes, pinned_root_count=pins)

    # -- writes -----------------------------------------------------------------------

    def put(self, block: Block, *, hashed_here: bool = False) -> bool:
        """Store a block after checking it; True if it was new. A batch of one (rule 1)."""
        return self.put_many([block], hashed_here=hashed_here)[0]

    def put_many(self, blocks: Sequence[Block], *, hashed_here: bool = False) -> list[bool]:
        """Store blocks in one ``batch`` (committed every ``PUT_MANY_BLOCKS_MAX``); for
        each, True if it was new (of a CID repeated in the list, the first)."""
        with self.batch(hashed_here=hashed_here) as batch:
            return [batch.put(block) for block in blocks]

    @contextlib.contextmanager
    def batch(self, *, hashed_here: bool = False) -> Iterator[BlockBatch]:
        """A batch of puts (rule 1): each block's file is written by ``put`` at once, and
        every ``commit_blocks_max`` blocks and on leaving the block they are made durable,
        renamed and indexed together (with fsync, in the background: rule 7). If the block
        raises, the blocks staged and not yet published are discarded (temp files removed,
        never indexed).

        ``hashed_here``: the caller computed the CIDs from these very bytes in this process
        (``FileBuilder``), so the second hash would only double the cost of ``store add``;
        ``get`` still rehashes on every read. Never set it for bytes from a peer or a file
        that nothing in this process has hashed (a fetch session's ``StoreBlock`` has:
        ``storage.exchange`` rule 4)."""
        batch = BlockBatch(self, self._file_batch(), hashed_here=hashed_here)
        try:
            yield batch
            self._commit(batch)
        except BaseException:
            self._abandon(batch)
            raise
        finally:
            batch.writer.close()

    def _file_batch(self) -> FileBatch:
        return FileBatch(self.root / "tmp", durable=self._fsync)

    def _stage(self, batch: BlockBatch, block: Block) -> bool:
        """Check ``block`` and write its temp file, or have the batch's writer write it
        (rules 1, 2, 4 and 7); True if new."""
        data = block.data
        if len(data) > BLOCK_SIZE_MAX:
            raise InvalidDataError(f"block of {len(data)} bytes exceeds {BLOCK_SIZE_MAX}")
        if not batch.hashed_here and not block.cid.matches(data):
            raise CorruptBlockError(block.cid)
        return self._enter(batch, block.cid, len(data), data)

    def _adopt(self, batch: BlockBatch, cid: Cid, size: int, temp_name: str) -> bool:
        """``BlockBatch.adopt``: the same rules as ``_stage``, on a file already written."""
        if not batch.hashed_here:
            raise LocalCommandError("only a batch of hashed blocks adopts a lane's file")
        if not 0 <= size <= BLOCK_SIZE_MAX or "/" in temp_name:
            raise InvalidDataError(f"cannot adopt {temp_name!r} of {size} bytes")
        new = False
        try:
            new = self._enter(batch, cid, size, None, temp_name)
        finally:
            if not new:  # here already, or refused: the file is nobody's
                (self.root / "tmp" / temp_name).unlink(missing_ok=True)
        return new

    def _enter(self, batch: BlockBatch, cid: Cid, size: int, data: bytes | None,
               temp_name: str | None = None) -> bool:
        """Stage a checked block: write ``data`` under a new temp name, or adopt the file
        ``temp_name`` when ``data`` is None (rules 1, 4 and 7); True if new."""
        with self._lock:
            if cid in batch.sizes or cid in batch.publishing or self.has(cid):
                return False
            if (batch.sizes or batch.publishing) \
                    and self._size_bytes + self._staged_bytes + size > self.quota_bytes:
                # Staged blocks cannot be collected; committed, they are ordinary blocks,
                # so a batch near the quota collects exactly as one put after another.
                self._commit(batch)
            self._make_room(self._staged_bytes + size)
            # A batch of one (``put``, the exchange) writes here; a durable batch writes
            # in the background from its second block on (rule 7).
            background = self._fsync and bool(batch.writer.started or batch.sizes)
            name = str(cid)
            path = self._path(cid, name)
            temp_name = temp_name or self._temp_name(name)
            if not background and data is None:
                batch.files.adopt(path, temp_name)
            elif not background:
                batch.files.stage(path, data, temp_name)
            batch.sizes[cid] = size
            self._staged_bytes += size
            self._writing[cid] = self._writing.get(cid, 0) + 1
        if background:  # outside the lock: it waits while the writer's queue is full
            batch.writer.stage(batch.files, path, data, temp_name)
        if len(batch.sizes) == self._commit_blocks_max:
            if batch.writer.started:
                self._hand_off(batch)
            else:
                self._commit(batch)
        return True

    def _hand_off(self, batch: BlockBatch) -> None:
        """Index the group the writer published last, then have it publish the blocks
        staged since (rule 7)."""
        self._finish_publishing(batch)
        batch.writer.publish(batch.files)
        batch.publishing, batch.sizes = batch.sizes, {}
        batch.publishing_files, batch.files = batch.files, self._file_batch()

    def _finish_publishing(self, batch: BlockBatch) -> None:
        """Wait for the group the writer is publishing and index it; if its publish (or a
        write into it) failed, discard what of it was not renamed, and raise."""
        if not batch.writer.publishing:
            return
        try:
            batch.writer.wait_published()
        except BaseException:
            with self._lock:
                assert batch.publishing_files is not None
                batch.publishing_files.discard()  # the writer is done with it (FIFO)
                self._release(batch.publishing)
            raise
        finally:
            batch.publishing_files = None
        self._index(batch.publishing)

    def _commit(self, batch: BlockBatch) -> None:
        """Publish and index every block of the batch so far; return when all are
        indexed. Publishing needs no lock (rule 7: a collection skips blocks being
        written, so none can remove a file between its rename and its row)."""
        if batch.writer.started:
            self._hand_off(batch)
            self._finish_publishing(batch)
        else:
            batch.files.publish()
            self._index(batch.sizes)

    def _index(self, sizes: dict[Cid, int]) -> None:
        """Index published blocks in one transaction, then release them (``sizes`` is
        emptied)."""
        with self._lock:
            # Another thread may have stored one of these meanwhile (same bytes, same name).
            present = self._indexed(list(sizes))
            rows = [(cid.to_bytes(), size, self._clock_ms())
                    for cid, size in sizes.items() if cid.to_bytes() not in present]
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO blocks (cid, size, last_access_ms) VALUES (?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._size_bytes += sum(size for _cid, size, _ms in rows)
            self._release(sizes)
            assert self._size_bytes + self._staged_bytes <= self.quota_bytes

    def _release(self, sizes: dict[Cid, int]) -> None:
        """Blocks no longer being written by a batch (indexed or discarded): they stop
        counting as staged and a collection may remove them again."""
        self._staged_bytes -= sum(sizes.values())
        for cid in sizes:
            count = self._writing[cid] - 1
            if count:
                self._writing[cid] = count
            else:
                del self._writing[cid]
        sizes.clear()

    def _abandon(self, batch: BlockBatch) -> None:
        """The batch's error path: a group the writer publishes is indexed (it is complete
        and durable, as a commit before the error would be); the rest is discarded once
        the writer has stopped. The caller's own error is the one that propagates."""
        try:
            with contextlib.suppress(OSError):  # that group was discarded (docstring)
                self._finish_publishing(batch)
        finally:
            batch.writer.close()
            with self._lock:
                batch.files.discard()
                self._release(batch.publishing)  # left only if its index transaction failed
                self._release(batch.sizes)

    def _indexed(self, cids: list[Cid]) -> set[bytes]:
        """Which of ``cids`` (at most ``PUT_MANY_BLOCKS_MAX``) have an index row."""
        if not cids:
            return set()
        keys = [cid.to_bytes() for cid in cids]
        marks = ",".join("?" * len(keys))
        return {row[0] for row in self._db.execute(
            f"SELECT cid FROM blocks WHERE cid IN ({marks})", keys)}

    def _make_room(self, size: int) -> None:
        """Collect unpinned blocks if ``size`` more bytes would pass the quota (rule 4)."""
        if self._size_bytes + size <= self.quota_bytes:
            return
        self._collect(max(0, int(self.quota_bytes * self._low_watermark) - size))
        if self._size_bytes + size > self.quota_bytes:
            raise QuotaExceededError(
                f"no room for {size} bytes: {self._size_bytes} of "
                f"{self.quota_bytes} bytes are pinned or in use")

    def _temp_name(self, name: str) -> str:
        """Unique in this process; the CID string ``name`` first, so a leftover names its
        block."""
        return f"{name}.{os.getpid()}.{next(self._names)}"

    def _drop_row(self, cid: Cid) -> None:
        row = self._db.execute("DELETE FROM blocks WHERE cid = ? RETURNING size",
                               (cid.to_bytes(),)).fetchone()
        if row is not None:
            self._size_bytes -= row[0]

    def _quarantine(self, path: Path) -> None:
        target = self.root / "quarantine" / f"{path.name}.{self._clock_ms()}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)

    # -- pins and garbage collection --------------------------------------------------

    def pin(self, root: Cid) -> None:
        """Pin ``root`` and, recursively, whatever of its DAG is (or comes to be) stored."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO pins (cid, pinned_at_ms) VALUES (?, ?)",
                             (root.to_bytes(), self._clock_ms()))

    def unpin(self, root: Cid) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM pins WHERE cid = ?", (root.to_bytes(),))
            return cursor.rowcount > 0

    def pins(self) -> list[Cid]:
        with self._lock:
            rows = self._db.execute("SELECT cid FROM pins ORDER BY cid").fetchall()
        return [Cid.from_bytes(row[0]) for row in rows]

    def _walk_present(self, root: Cid) -> Iterator[tuple[Cid, bool]]:
        """(cid, present) for each distinct block of ``root``'s DAG reachable in the store."""
        seen: set[Cid] = set()
        stack = [(root, 0)]
        while stack and len(seen) < DAG_BLOCKS_MAX:
            cid, depth = stack.pop()
            if cid in seen:
                continue
            seen.add(cid)
            present = self.has(cid)
            yield cid, present
            if present and cid.codec == CODEC_DAG_PB and depth < DAG_DEPTH_MAX:
                try:
                    children = links_of(cid, self._read(cid))
                except StorageError:  # corrupt (now quarantined) or malformed: no children
                    continue
                stack.extend((child, depth + 1) for child in reversed(children))

    def pinned_blocks(self) -> set[Cid]:
        """Every stored block reachable from a pin (rule 3)."""
        with self._lock:
            pinned: set[Cid] = set()
            for root in self.pins():
                pinned.update(cid for cid, present in self._walk_present(root) if present)
            return pinned

    def missing_blocks(self, root: Cid, *, limit: int = 1024) -> list[Cid]:
        """Blocks of ``root``'s DAG known to be missing (children of stored nodes first)."""
        with self._lock:
            missing = []
            for cid, present in self._walk_present(root):
                if not present:
                    missing.append(cid)
                    if len(missing) >= limit:
                        break
            return missing

    def gc(self, target_bytes: int = 0) -> GcReport:
        """Remove unpinned blocks, least recently accessed first, down to ``target_bytes``."""
        with self._lock:
            return self._collect(target_bytes)

    def _collect(self, target_bytes: int) -> GcReport:
        pinned = self.pinned_blocks()
        removed = freed = 0
        rows = self._db.execute("SELECT cid, size FROM blocks ORDER BY last_access_ms, cid"
                                ).fetchall()
        for raw, size in rows:
            if self._size_bytes <= target_bytes:
                break
            cid = Cid.from_bytes(raw)
            if cid in pinned or cid in self._writing:  # rule 7: a batch is writing it
                continue
            self._drop_row(cid)  # row first: a crash between leaves an orphan for verify
            self._path(cid).unlink(missing_ok=True)
            removed += 1
            freed += size
        return GcReport(removed_count=removed, freed_bytes=freed, pinned_count=len(pinned))

    # -- verification -----------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Rehash every block file; quarantine corrupt ones, adopt orphans, drop lost rows."""
        with self._lock:
            checked = 0
            corrupt: list[str] = []
            adopted: list[Cid] = []
            for path in sorted((self.root / "blocks").glob("*/*")):
                checked += 1
                status = self._verify_file(path)
                if status == "corrupt":
                    corrupt.append(path.name)
                elif status == "adopted":
                    adopted.append(Cid.parse(path.name))
            missing = []
            for (raw,) in self._db.execute("SELECT cid FROM blocks").fetchall():
                cid = Cid.from_bytes(raw)
                if not self._path(cid).exists():
                    missing.append(cid)
            for cid in missing:
                self._drop_row(cid)
            return VerifyReport(checked_count=checked, corrupt=tuple(corrupt),
                                missing=tuple(missing), adopted=tuple(adopted))

    def _verify_file(self, path: Path) -> str:
        try:
            cid = Cid.parse(path.name)
        except InvalidDataError:
            self._quarantine(path)
            return "corrupt"
        data = path.read_bytes()
        if path.parent.name != cid.digest[:1].hex() or not cid.matches(data) \
                or len(data) > BLOCK_SIZE_MAX:
            self._quarantine(path)
            self._drop_row(cid)
            return "corrupt"
        if self.has(cid):
            return "ok"
        self._db.execute("INSERT INTO blocks (cid, size, last_access_ms) VALUES (?, ?, ?)",
                         (cid.to_bytes(), len(data), self._clock_ms()))
        self._size_bytes += len(data)
        return "adopted"
