"""Batches of files written so that a crash never shows partial data under a final name.

Rules:
1. ``FileBatch.stage`` writes each file at once under a unique temp name;
   ``FileBatch.publish`` renames them all to their final names. When ``durable``: every
   file's data is fsynced before any of the batch is renamed, and every directory that
   gained a name is fsynced, once per batch, before ``publish`` returns. A caller that
   records the names afterwards (the block store's index) therefore never records a name
   that a crash or power cut could take back, and no final name ever points at data that
   was not yet on the disk. Without ``durable`` the same order holds against a killed
   process (a rename is atomic), not against a power cut.
   ``FileBatch.adopt`` takes a file that another process of the node (a transfer lane)
   wrote whole under a temp name: from there it is staged like the others, and the same
   order holds (its fsync comes in ``publish``).
2. Writeback starts as each file is staged (Linux ``sync_file_range`` with
   ``SYNC_FILE_RANGE_WRITE``), so the disk is already writing the first files while later
   ones are produced, and the fsyncs of ``publish`` mostly wait for I/O in flight. That
   call is only a hint: where it is missing (not Linux, no such symbol) or refused, the
   fsyncs alone keep rule 1, at the old speed.
3. A directory is fsynced once per batch, however many of the batch's files it gained:
   one per file was half of all fsyncs of a ``store add`` (cProfile, BENCHMARKS.md).
4. ``discard`` (the caller's error path) leaves nothing of the batch under a temp name;
   files already renamed stay (they are complete, and the caller has not recorded them:
   the block store's ``verify`` adopts such files).
5. Bounded: at most ``FILES_MAX`` files staged (and, when durable, as many descriptors
   open) per batch.
6. ``BackgroundWriter`` runs the stage writes and publishes of durable batches in one
   worker thread, in the order the caller submits them, so the caller hashes the next
   blocks while the disk takes the last ones (open, write, fsync, ``rename`` and the
   directory fsyncs all release the GIL). A batch is published only after every write
   staged into it before the publish (one thread, one queue: FIFO), so rule 1 holds inside
   each batch unchanged, and what a caller records after ``wait_published`` returns is as
   durable as after a ``publish`` in its own thread. After the first failed job the writer
   runs no further writes or publishes: a batch whose write failed is never published
   (its temp file may be partial); the error is raised to the caller by the next
   ``stage``, ``publish`` or ``wait_published``. At most ``WRITES_QUEUED_MAX`` writes wait
   in the queue (each holds its block's bytes), so ``stage`` blocks past that. The worker
   touches only the batches it was given, never the caller's other state, and needs no
   lock of the caller's.

Rejected: fsyncing the batch's files from a thread pool so the disk queue sees them
together. Measured on the 2-core VM (100 x 1 MiB, batches of 16 and 64): with early
writeback the pool was no faster (1535 vs 1575 MB/s for 64, 932 vs 1299 MB/s for 16), since
``sync_file_range`` already queues every file's writes; without it the pool helped only for
large batches. ``syncfs`` (one flush for the whole file system) would also flush other
processes' data and waits for it: not ours to spend.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

FILES_MAX = 64
SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or None where the C library has no such call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(descriptor: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now (rule 2: a hint only, so a
    failure is ignored; the fsync that must follow reports real I/O errors)."""
    if _sync_file_range is not None:
        _sync_file_range(descriptor, 0, 0, SYNC_FILE_RANGE_WRITE)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (names created, renamed, removed) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_all(descriptor: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` (one ``os.write`` may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


class FileBatch:
    """Files staged under temp names as they come, then published together (module rules).

    ``stage`` writes a file at once, so its bytes need not stay in memory until the batch
    is published: holding a batch of 1 MiB blocks cost a page fault per 4 KiB (glibc hands
    the freed buffers back to the kernel between batches; cProfile of ``store add`` without
    fsync: 27,500 minor faults and 570 MB/s against 4,000 and 750 MB/s one block at a
    time)."""

    def __init__(self, temp_dir: Path, *, durable: bool) -> None:
        self.temp_dir = temp_dir
        self.durable = durable
        self._staged: list[tuple[Path, Path]] = []  # (temp, final)
        self._descriptors: list[int] = []  # open until published, durable batches only

    def __len__(self) -> int:
        return len(self._staged)

    def stage(self, final: Path, data: bytes | memoryview, temp_name: str) -> None:
        """Write ``data`` to ``temp_dir / temp_name`` (unique in this process; same file
        system as ``final``, whose directory must exist); with ``durable``, start its
        writeback (rule 2)."""
        assert len(self._staged) < FILES_MAX, len(self._staged)
        temp = self.temp_dir / temp_name
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._staged.append((temp, final))
        try:
            write_all(descriptor, data)
            if self.durable:
                start_writeback(descriptor)
        except BaseException:
            os.close(descriptor)
            raise
        if self.durable:
            self._descriptors.append(descriptor)
        else:
            os.close(descriptor)

    def adopt(self, final: Path, temp_name: str) -> None:
        """Take ``temp_dir / temp_name``, written whole by another process of this node (a
        transfer lane) that has started its writeback, as if ``stage`` had written it: with
        ``durable`` its fsync comes in ``publish`` (through a read-only descriptor, which
        flushes the file's data all the same)."""
        assert len(self._staged) < FILES_MAX, len(self._staged)
        temp = self.temp_dir / temp_name
        descriptor = os.open(temp, os.O_RDONLY | os.O_CLOEXEC) if self.durable else None
        self._staged.append((temp, final))
        if descriptor is not None:
            self._descriptors.append(descriptor)

    def publish(self) -> None:
        """fsync every staged file, rename them all, fsync each directory that gained a
        name once (rule 1); the batch is empty afterwards. On an error, ``discard``."""
        try:
            for descriptor in self._descriptors:
                os.fsync(descriptor)
        finally:
            self._close_all()
        directories: set[Path] = set()
        while self._staged:
            temp, final = self._staged[0]
            os.replace(temp, final)
            self._staged.pop(0)
            directories.add(final.parent)
        if self.durable:
            for directory in sorted(directories):
                fsync_directory(directory)

    def discard(self) -> None:
        """Remove every staged file not yet renamed (rule 4)."""
        self._close_all()
        for temp, _final in self._staged:
            temp.unlink(missing_ok=True)
        self._staged.clear()

    def _close_all(self) -> None:
        while self._descriptors:
            os.close(self._descriptors.pop())


WRITES_QUEUED_MAX = 8
"""Writes queued for the worker (rule 6): 8 MiB of 1 MiB blocks in memory at most. Measured
on the 2-core VM (``store add`` of 96 MiB, fsync on, 5 rounds alternating): 8 gave 0.60-0.64
of sha256 in every round, 3 gave 0.41-0.64 (the caller waited on the queue whenever a fsync
was slow)."""


class BackgroundWriter:
    """Stage writes and publishes of ``FileBatch``es in one worker thread (rule 6).

    The thread starts with the first job and ends at ``close``, which the owner calls on
    every path (the block store: when its batch ends), so no thread outlives its batch."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(WRITES_QUEUED_MAX)
        self._error: BaseException | None = None  # the first failed job's (sticky)
        self._published: Future[None] | None = None  # the last publish submitted

    @property
    def started(self) -> bool:
        return self._executor is not None

    @property
    def publishing(self) -> bool:
        """A publish was submitted and not yet waited for."""
        return self._published is not None

    def stage(self, files: FileBatch, final: Path, data: bytes | memoryview | None,
              temp_name: str) -> None:
        """Queue ``files.stage(final, data, temp_name)`` (``files.adopt`` for None); blocks
        while the queue is full."""
        self._raise_error()
        self._slots.acquire()
        try:
            self._submit(self._stage_job, files, final, data, temp_name)
        except BaseException:
            self._slots.release()
            raise

    def publish(self, files: FileBatch) -> None:
        """Queue ``files.publish()`` after the writes queued so far; the caller must not
        touch ``files`` until ``wait_published`` returns."""
        assert self._published is None, "publish before the last one was waited for"
        self._raise_error()
        self._published = self._submit(self._publish_job, files)

    def wait_published(self) -> None:
        """Block until the last publish is done; raise its error (or the earlier write
        error that kept it from running)."""
        published, self._published = self._published, None
        if published is not None:
            published.result()

    def close(self) -> None:
        """Let the queued jobs finish and end the worker. Errors not yet raised stay
        unraised: the owner is on its error path and discards those batches."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._published = None

    def _submit(self, job: Callable[..., None], *args: object) -> Future[None]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="file-batch-writer")
        return self._executor.submit(job, *args)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _stage_job(self, files: FileBatch, final: Path, data: bytes | memoryview | None,
                   temp_name: str) -> None:
        try:
            if self._error is None and data is None:
                files.adopt(final, temp_name)
            elif self._error is None:
                files.stage(final, data, temp_name)
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._slots.release()

    def _publish_job(self, files: FileBatch) -> None:
        self._raise_error()  # a write into this batch (or an earlier one) failed
        try:
            files.publish()
        except BaseException as error:
            self._error = error
            raise
