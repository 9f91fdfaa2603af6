"""Progress of long storage operations (add, get, pin, import), read by ``store_progress``.

Rules:
1. The client names its operation (``operation_id``, chosen by the CLI) so a second
   connection can poll it while the first waits for the result; an operation without an id
   is tracked under a generated one, never shared.
2. Bounded: at most ``operations_max`` entries; past it the oldest finished one is
   forgotten, and if all are running the new one is refused (the caller says "busy").
3. Counters are plain ints written by one worker thread or task and read by the event
   loop: a reader sees a slightly stale value, never a torn one (CPython int assignment).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

OPERATION_ID_CHARS_MAX = 64


@dataclass(slots=True)
class Operation:
    operation_id: str
    kind: str
    root: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    blocks_done: int = 0
    blocks_total: int | None = None
    state: str = "running"  # running, done, failed
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "kind": self.kind,
            "root": self.root,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "blocks_done": self.blocks_done,
            "blocks_total": self.blocks_total,
            "state": self.state,
            "reason": self.reason,
        }


class OperationsFull(Exception):
    """Every tracked operation is still running."""


class Operations:
    def __init__(self, operations_max: int) -> None:
        self._max = operations_max
        self._entries: OrderedDict[str, Operation] = OrderedDict()
        self._ids = itertools.count(1)

    def start(self, kind: str, operation_id: str | None) -> Operation:
        """A new running operation (rule 1); raises ``OperationsFull`` (rule 2)."""
        if operation_id is None or operation_id in self._entries:
            operation_id = f"{kind}-{next(self._ids)}"
        while len(self._entries) >= self._max:
            finished = next((k for k, v in self._entries.items() if v.state != "running"), None)
            if finished is None:
                raise OperationsFull(f"{self._max} storage operations are running")
            del self._entries[finished]
        operation = self._entries[operation_id] = Operation(operation_id, kind)
        return operation

    def get(self, operation_id: str) -> Operation | None:
        return self._entries.get(operation_id)

    def running(self) -> list[Operation]:
        return [entry for entry in self._entries.values() if entry.state == "running"]
