"""One-way messages to peers through one queue and one sender task per peer.

Why: a PBFT replica sends a handful of small messages per block to each fellow validator
(votes, FORWARDs, pre-prepares). Sent one task each (until session 6), every message paid
for its own trio task, cancel scope, connection check and write: one Yamux frame, one
Noise message and one socket send, and a wake-up of the peer's reader. Here the messages
that queue for a peer while its previous write is in progress go out together, in one
write of consecutive wire frames (`Wire.notify_many`), and in the order they were sent.
Measured on the ledger benchmark at 2,000 tx/s: no CPU change (few messages queue at
once); what it brings is order and the dead-peer behaviour below.

Rules: a full queue drops the new message and counts it (the sender of one-way messages,
like a PBFT replica, must retransmit what matters); a failed write drops what it carried
and counts it, and the next message tries again (so a dead peer costs one dial attempt at
a time, not one per message); a peer's task ends when the peer is retired.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
import trio

from prsm_node.net.wire import RequestFailed, Wire

log = structlog.get_logger(__name__)

WRITE_BYTES_MAX = 256 * 1024
"""Frames are joined into one write up to about this much; more waits for the next."""


@dataclass(slots=True)
class _Queue:
    frames: list[bytes] = field(default_factory=list)
    wake: trio.Event = field(default_factory=trio.Event)
    retired: bool = False


class Outbox:
    """Queues one-way `protocol` messages per peer; `connect(peer)` reaches the peer (or
    raises RequestFailed) before each write."""

    def __init__(self, wire: Wire, protocol: str, *, connect: Callable[[str], Awaitable[None]],
                 queue_max: int) -> None:
        self._wire, self._protocol, self._connect = wire, protocol, connect
        self._queue_max = queue_max
        self._queues: dict[str, _Queue] = {}
        self._nursery: trio.Nursery | None = None
        self.counters = {"sends_dropped": 0, "sends_failed": 0, "send_writes": 0}

    def bind(self, nursery: trio.Nursery) -> None:
        """Give the outbox the nursery its sender tasks run in."""
        self._nursery = nursery

    def send(self, peer: str, frame: bytes) -> None:
        """Queue `frame` (an encoded message) for `peer`; never blocks."""
        queue = self._queues.get(peer)
        if queue is None:
            assert self._nursery is not None, "Outbox.bind() was not called"
            queue = self._queues[peer] = _Queue()
            self._nursery.start_soon(self._drain, peer, queue)
        if len(queue.frames) >= self._queue_max:
            self.counters["sends_dropped"] += 1
            return
        queue.frames.append(frame)
        queue.wake.set()

    def retire(self, keep: set[str]) -> None:
        """Stop sending to every peer not in `keep` (what was queued for them is dropped)."""
        for peer in [peer for peer in self._queues if peer not in keep]:
            queue = self._queues.pop(peer)
            queue.retired = True
            queue.wake.set()

    async def _drain(self, peer: str, queue: _Queue) -> None:
        while True:
            await queue.wake.wait()
            if queue.retired:
                return
            frames = _take(queue.frames)
            if not queue.frames:
                queue.wake = trio.Event()
            try:
                await self._connect(peer)
                await self._wire.notify_many(peer, self._protocol, frames)
                self.counters["send_writes"] += 1
            except RequestFailed as error:
                self.counters["sends_failed"] += len(frames)
                log.debug("outbox.send_failed", peer=peer, protocol=self._protocol,
                          frames=len(frames), reason=error.reason)


def _take(frames: list[bytes]) -> list[bytes]:
    """Remove and return the first frames of `frames` up to WRITE_BYTES_MAX (at least one)."""
    size, count = 0, 0
    for frame in frames:
        if count and size + len(frame) > WRITE_BYTES_MAX:
            break
        size += len(frame)
        count += 1
    taken = frames[:count]
    del frames[:count]
    return taken
