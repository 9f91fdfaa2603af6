"""Local storage jobs run in worker threads: add a file, write a file out, CAR in and out.

Rules:
1. Every function here is synchronous and may take long (it reads, hashes and writes whole
   files): the service calls it through ``trio.to_thread.run_sync``, never on the loop.
2. Streaming: files and CARs move one block (at most 1 MiB) at a time; nothing holds a
   whole file in memory. ``add_file`` writes each block as it is built and has the store
   make them durable and index them in batches (``BlockStore.batch``), so the fsyncs,
   directory fsyncs and index transaction are paid once per batch, not once per block.
   With fsync, the store's writer thread creates, writes, fsyncs and renames the files
   while this thread reads and hashes (``storage.blockstore`` rule 7). Rejected: hashing
   in a second thread while this one writes (BENCHMARKS.md, "Local add in batches"):
   slower on the shared 2-core machine, since this thread then only waited on the disk.
3. Outputs are written to ``<name>.part`` and renamed when complete, so an interrupted
   ``store get -o`` or ``export-car`` never leaves a truncated file under the real name.
4. Errors are the core's typed ``StorageError``s or ``OSError``; the API maps them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prsm_node.storage_progress import Operation
from storage.blockstore import BlockStore
from storage.car import CarSummary, export_car, import_car
from storage.cid import CODEC_RAW, Cid
from storage.errors import InvalidDagError, LocalCommandError, StorageError
from storage.unixfs import AddResult, Block, add_path, file_size, iter_file

Put = Callable[[Block], bool]
Push = Callable[[Block], None]


def add_file(store: BlockStore, path: Path, push: Push | None, operation: Operation
             ) -> AddResult:
    """Chunk, hash and store ``path`` in one batch (rule 2), ``push`` each block (Kubo) as it
    is written; pin the root once the batch has committed every block (with fsync: made
    them durable); check nothing was collected meanwhile."""
    operation.bytes_total = path.stat().st_size
    with store.batch(hashed_here=True) as batch:

        def put_and_count(block: Block) -> None:
            batch.put(block)
            if push is not None:
                push(block)
            operation.blocks_done += 1
            if block.cid.codec == CODEC_RAW:
                operation.bytes_done += len(block.data)

        result = add_path(path, put_and_count)
    store.pin(result.root)
    if store.missing_blocks(result.root, limit=1):
        # A put past the quota collects unpinned blocks, and this file's are unpinned
        # until its root exists.
        store.unpin(result.root)
        raise LocalCommandError(
            f"blocks of {path} were collected while it was added: storage.quota_bytes "
            f"({store.quota_bytes}) is too small for it next to the pinned data"
        )
    return result


def write_file(store: BlockStore, root: Cid, output: Path, operation: Operation) -> int:
    """Write the file under ``root`` to ``output`` (rule 3); its size."""
    operation.bytes_total = file_size(root, store.get)
    partial = output.with_name(output.name + ".part")
    with open(partial, "wb") as stream:
        for piece in iter_file(root, store.get):
            stream.write(piece)
            operation.bytes_done += len(piece)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, output)
    return operation.bytes_done


def export_car_file(store: BlockStore, root: Cid, output: Path) -> CarSummary:
    partial = output.with_name(output.name + ".part")
    try:
        with open(partial, "wb") as stream:
            summary = export_car(stream, [root], store.get)
            stream.flush()
            os.fsync(stream.fileno())
    except (StorageError, OSError):
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output)
    return summary


def import_car_file(
    store: BlockStore, path: Path, put: Put, operation: Operation, *, pin: bool
) -> tuple[CarSummary, list[Cid]]:
    """Verify and store every block of a CAR; pin the roots whose DAG is now complete."""
    operation.bytes_total = path.stat().st_size

    def put_and_count(block: Block) -> None:
        put(block)
        operation.blocks_done += 1
        operation.bytes_done += len(block.data)

    with open(path, "rb") as stream:
        summary = import_car(stream, put_and_count, size_max=operation.bytes_total)
    pinned = [root for root in summary.roots if pin and is_complete(store, root)]
    for root in pinned:
        store.pin(root)
    return summary, pinned


def is_complete(store: BlockStore, root: Cid) -> bool:
    return store.has(root) and not store.missing_blocks(root, limit=1)


def dag_size(store: BlockStore, root: Cid) -> int:
    """The file's size from its root block, or the root block's size for other DAGs."""
    try:
        return file_size(root, store.get)
    except InvalidDagError:
        return store.size_of(root) or 0
