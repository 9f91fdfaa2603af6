"""Batches of files written so that a crash never shows partial data under a final name.

Rules:
1. ``write_files`` writes each file under a unique temp name and renames it to its final
   name. When ``durable``: every file's data is fsynced before any of the batch is renamed,
   and every directory that gained a name is fsynced, once per batch, before the call
   returns. A caller that records the names afterwards (the block store's index) therefore
   never records a name that a crash or power cut could take back, and no final name ever
   points at data that was not yet on the disk. Without ``durable`` the same order holds
   against a killed process (a rename is atomic), not against a power cut.
2. Writeback starts as each file is written (Linux ``sync_file_range`` with
   ``SYNC_FILE_RANGE_WRITE``), so the disk is already writing the first files while later
   ones are copied into the page cache, and the fsyncs that follow mostly wait for I/O in
   flight. That call is only a hint: where it is missing (not Linux, no such symbol) or
   refused, the fsyncs alone keep rule 1, at the old speed.
3. A directory is fsynced once per batch, however many of the batch's files it gained:
   one per file was half of all fsyncs of a ``store add`` (cProfile, BENCHMARKS.md).
4. On an error nothing of the batch stays under a temp name; files already renamed stay
   (they are complete, and the caller has not recorded them: the block store's ``verify``
   adopts such files).
5. Bounded: at most ``FILES_MAX`` files (and as many open descriptors) per call.

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
from collections.abc import Callable, Sequence
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


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def _stage(files: Sequence[tuple[Path, bytes]], temp_dir: Path,
           temp_name: Callable[[Path], str], durable: bool,
           staged: list[tuple[Path, Path]]) -> None:
    """Write every file under a temp name (appended to ``staged`` as soon as it exists, so
    the caller can remove it on an error); when durable, fsync them all."""
    descriptors: list[int] = []
    try:
        for final, data in files:
            temp = temp_dir / temp_name(final)
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o644)
            descriptors.append(descriptor)
            staged.append((temp, final))
            _write_all(descriptor, data)
            if durable:
                start_writeback(descriptor)
        if durable:
            for descriptor in descriptors:
                os.fsync(descriptor)
    finally:
        for descriptor in descriptors:
            os.close(descriptor)


def write_files(files: Sequence[tuple[Path, bytes]], temp_dir: Path,
                temp_name: Callable[[Path], str], *, durable: bool) -> None:
    """Write ``(final path, data)`` pairs as one batch (the module rules). ``temp_name``
    names a final path's temp file in ``temp_dir`` (same file system: rename is atomic),
    unique within this process; the final paths' directories must exist."""
    assert len(files) <= FILES_MAX, len(files)
    staged: list[tuple[Path, Path]] = []
    renamed = 0
    directories: set[Path] = set()
    try:
        _stage(files, temp_dir, temp_name, durable, staged)
        for temp, final in staged:
            os.replace(temp, final)
            renamed += 1
            directories.add(final.parent)
    finally:
        for temp, _final in staged[renamed:]:
            temp.unlink(missing_ok=True)
    if durable:
        for directory in sorted(directories):
            fsync_directory(directory)
