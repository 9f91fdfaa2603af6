"""Control methods of the block store: store_add, store_get, store_pin, store_unpin,
store_ls, store_stat, store_gc, store_verify, store_export_car, store_import_car,
store_progress. Each is documented in docs/control-api.md.

Rules:
1. Paths are resolved by the node and must be absolute (the CLI sends absolute paths; the
   socket is local and mode 0600, so the caller is the node's own user). Files move in
   worker threads one block at a time (storage_local.py), never whole through the socket.
2. CIDs are CIDv1 strings (raw or dag-pb, sha2-256), the form ``store add`` prints.
3. Every failure a user can act on is an ``RpcError`` that says what to do; a failed
   fetch says how far it got and that running it again resumes it.
4. Long calls (add, get, pin, import) take an optional ``operation_id`` that
   ``store_progress`` reports on while they run (storage_progress.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.storage_fetch import FetchOutcome
from prsm_node.storage_local import add_file, export_car_file, import_car_file, write_file
from prsm_node.storage_progress import Operation, OperationsFull
from prsm_node.storage_service import FetchesBusy
from storage.blockstore import LS_LIMIT_MAX
from storage.cid import Cid
from storage.errors import (
    BlockNotFoundError,
    InvalidDataError,
    LocalCommandError,
    QuotaExceededError,
    StorageError,
)

if TYPE_CHECKING:
    from prsm_node.storage_replication import Replicator
    from prsm_node.storage_service import StorageService

T = TypeVar("T")
QUOTA_HINT = (
    "free space with `prsm-node store gc`, unpin roots (`prsm-node store unpin`), "
    "or raise storage.quota_bytes in node.toml"
)


def register_storage_methods(
    dispatcher: Dispatcher, storage: StorageService, replicator: Replicator | None
) -> None:
    StorageMethods(storage, replicator).register(dispatcher)


class StorageMethods:
    """The store_* control methods, bound to the node's storage service."""

    def __init__(self, storage: StorageService, replicator: Replicator | None) -> None:
        self._storage = storage
        self._replicator = replicator

    def register(self, dispatcher: Dispatcher) -> None:
        text, number, flag = str, int, bool
        dispatcher.register(
            "store_add", self.store_add, [Param("path", text), Param("operation_id", text, None)]
        )
        dispatcher.register(
            "store_get",
            self.store_get,
            [
                Param("cid", text),
                Param("output", text, None),
                Param("pin", flag, True),
                Param("operation_id", text, None),
            ],
        )
        dispatcher.register(
            "store_pin", self.store_pin, [Param("cid", text), Param("operation_id", text, None)]
        )
        dispatcher.register("store_unpin", self.store_unpin, [Param("cid", text)])
        dispatcher.register(
            "store_ls",
            self.store_ls,
            [
                Param("blocks", flag, False),
                Param("after", text, None),
                Param("limit", number, 1000),
            ],
        )
        dispatcher.register("store_stat", self.store_stat)
        dispatcher.register("store_gc", self.store_gc)
        dispatcher.register("store_verify", self.store_verify)
        dispatcher.register(
            "store_export_car", self.store_export_car, [Param("cid", text), Param("path", text)]
        )
        dispatcher.register(
            "store_import_car",
            self.store_import_car,
            [Param("path", text), Param("pin", flag, True), Param("operation_id", text, None)],
        )
        dispatcher.register("store_progress", self.store_progress, [Param("operation_id", text)])

    # -- helpers ------------------------------------------------------------------------------

    async def store_add(self, path: str, operation_id: str | None = None) -> dict[str, Any]:
        source = _absolute(path, "path")
        if not source.is_file():
            raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'path': {source} is not a file")
        operation = _start(self._storage, "add", operation_id)
        result = await _run(
            operation,
            self._storage.in_thread(
                add_file, self._storage.store, source, self._storage.push, operation
            ),
        )
        operation.root = str(result.root)
        announced = await self._storage.provide(result.root)
        return {
            "cid": str(result.root),
            "size": result.size,
            "blocks": result.block_count,
            "pinned": True,
            "announced_to": announced,
            "operation_id": operation.operation_id,
        }

    async def store_get(
        self, cid: str, output: str | None = None, pin: bool = True, operation_id: str | None = None
    ) -> dict[str, Any]:
        root = _cid(cid)
        target = None if output is None else _absolute(output, "output")
        if target is not None and not target.parent.is_dir():
            raise RpcError(
                ErrorCode.INVALID_PARAMS, f"param 'output': no directory {target.parent}"
            )
        operation = _start(self._storage, "get", operation_id)
        outcome = await _run(operation, _fetch(self._storage, root, pin, operation))
        answer = _outcome_json(outcome) | {"operation_id": operation.operation_id}
        if target is not None:
            operation.bytes_done = 0
            size = await _run(
                operation,
                self._storage.in_thread(write_file, self._storage.store, root, target, operation),
            )
            answer |= {"output": str(target), "size": size}
        return answer

    async def store_pin(self, cid: str, operation_id: str | None = None) -> dict[str, Any]:
        root = _cid(cid)
        operation = _start(self._storage, "pin", operation_id)
        outcome = await _run(operation, _fetch(self._storage, root, True, operation))
        return _outcome_json(outcome) | {"pinned": True}

    async def store_unpin(self, cid: str) -> dict[str, Any]:
        root = _cid(cid)
        removed = await self._storage.in_thread(self._storage.store.unpin, root)
        if not removed:
            raise RpcError(ErrorCode.NODE_ERROR, f"{root} is not pinned (see `prsm-node store ls`)")
        return {"cid": str(root), "unpinned": True}

    async def store_ls(
        self, blocks: bool = False, after: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        if not 1 <= limit <= LS_LIMIT_MAX:
            raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'limit': 1..{LS_LIMIT_MAX}")
        if not blocks:
            pins = await self._storage.in_thread(self._storage.store.pins)
            return {"pins": [str(root) for root in pins]}
        start = None if after is None else _cid(after, "after")
        rows = await self._storage.in_thread(
            lambda: self._storage.store.ls(after=start, limit=limit)
        )
        listed = [{"cid": str(cid), "size": size} for cid, size in rows]
        return {"blocks": listed, "more": len(listed) == limit}

    async def store_stat(self) -> dict[str, Any]:
        statistics = await self._storage.in_thread(self._storage.store.stat)
        fetches = [
            {
                "root": str(root),
                "blocks_done": s.blocks_done,
                "blocks_known": s.blocks_known,
                "bytes_by_peer": dict(by_peer),
            }
            for root, s, by_peer in self._storage.active_fetches()
        ]
        return asdict(statistics) | {
            "path": str(self._storage.store_dir),
            "counters": self._storage.statistics(),
            "replication": self._replicator.statistics() if self._replicator is not None else None,
            "fetches": fetches,
            "kubo_api": self._storage.config.kubo_api or None,
        }

    async def store_gc(self) -> dict[str, Any]:
        report = await self._storage.in_thread(self._storage.store.gc)
        return asdict(report)

    async def store_verify(self) -> dict[str, Any]:
        report = await self._storage.in_thread(self._storage.store.verify)
        return {
            "checked_count": report.checked_count,
            "corrupt": list(report.corrupt),
            "missing": [str(cid) for cid in report.missing],
            "adopted": [str(cid) for cid in report.adopted],
            "ok": not report.corrupt and not report.missing,
        }

    async def store_export_car(self, cid: str, path: str) -> dict[str, Any]:
        root, target = _cid(cid), _absolute(path, "path")
        summary = await _guard(
            self._storage.in_thread(export_car_file, self._storage.store, root, target)
        )
        return {
            "cid": str(root),
            "path": str(target),
            "blocks": summary.block_count,
            "size": summary.size,
        }

    async def store_import_car(
        self, path: str, pin: bool = True, operation_id: str | None = None
    ) -> dict[str, Any]:
        source = _absolute(path, "path")
        if not source.is_file():
            raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'path': {source} is not a file")
        operation = _start(self._storage, "import", operation_id)
        summary, pinned = await _run(
            operation,
            self._storage.in_thread(
                lambda: import_car_file(
                    self._storage.store, source, self._storage.put, operation, pin=pin
                )
            ),
        )
        for root in pinned:
            await self._storage.provide(root)
        return {
            "roots": [str(root) for root in summary.roots],
            "blocks": summary.block_count,
            "size": summary.size,
            "pinned": [str(root) for root in pinned],
        }

    async def store_progress(self, operation_id: str) -> dict[str, Any]:
        operation = self._storage.operations.get(operation_id)
        if operation is None:
            raise RpcError(
                ErrorCode.NODE_ERROR,
                f"no storage operation {operation_id!r} (finished long ago, or never started)",
            )
        return operation.to_json()


def _cid(text: str, name: str = "cid") -> Cid:
    try:
        return Cid.parse(text)
    except InvalidDataError as error:
        raise RpcError(
            ErrorCode.INVALID_PARAMS,
            f"param '{name}': {error} (expected a CIDv1 such as `prsm-node store add` prints)",
        ) from None


def _absolute(text: str, name: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param '{name}': must be an absolute path")
    return path


def _start(storage: StorageService, kind: str, operation_id: str | None) -> Operation:
    if operation_id is not None and not 1 <= len(operation_id) <= 64:
        raise RpcError(ErrorCode.INVALID_PARAMS, "param 'operation_id': 1..64 characters")
    try:
        return storage.operations.start(kind, operation_id)
    except OperationsFull as error:
        raise RpcError(ErrorCode.SERVER_BUSY, f"{error}; retry when one finishes") from None


async def _run(operation: Operation, job: Awaitable[T]) -> T:
    """Await ``job``, marking the operation done or failed; storage errors become RpcErrors."""
    try:
        result = await _guard(job)
    except RpcError as error:
        operation.state, operation.reason = "failed", error.message
        raise
    operation.state = "done"
    return result


async def _guard(job: Awaitable[T]) -> T:
    try:
        return await job
    except QuotaExceededError as error:
        raise RpcError(ErrorCode.NODE_ERROR, f"{error}; {QUOTA_HINT}") from None
    except BlockNotFoundError as error:
        raise RpcError(
            ErrorCode.NODE_ERROR,
            f"{error}: the DAG is not complete here; fetch it first with `prsm-node store get`",
        ) from None
    except (LocalCommandError, InvalidDataError, StorageError) as error:
        raise RpcError(ErrorCode.NODE_ERROR, str(error)) from None
    except FetchesBusy as error:
        raise RpcError(ErrorCode.SERVER_BUSY, f"{error}; retry when one finishes") from None
    except OSError as error:
        raise RpcError(ErrorCode.NODE_ERROR, f"file error: {error}") from None


async def _fetch(
    storage: StorageService, root: Cid, pin: bool, operation: Operation
) -> FetchOutcome:
    outcome = await storage.fetch(root, pin=pin, operation=operation)
    if not outcome.complete:
        statistics = outcome.statistics
        raise RpcError(
            ErrorCode.NODE_ERROR,
            f"fetch of {root} failed: {outcome.reason}; {statistics.blocks_done} of "
            f"{statistics.blocks_known} known blocks are stored, and running the command "
            "again resumes from there",
        )
    return outcome


def _outcome_json(outcome: FetchOutcome) -> dict[str, Any]:
    statistics = outcome.statistics
    return {
        "cid": str(outcome.root),
        "blocks_total": statistics.blocks_done,
        "blocks_fetched": statistics.blocks_fetched,
        "blocks_local": statistics.blocks_done - statistics.blocks_fetched,
        "bytes_received": statistics.bytes_received,
        "duplicate_blocks": statistics.duplicate_blocks,
        "providers": statistics.providers,
        "peers_dropped": statistics.peers_dropped,
        "bytes_by_peer": dict(outcome.bytes_by_peer),
        "duration_ms": outcome.duration_ms,
    }
