"""prsm_node/net/outbox.py: per-peer queues of one-way messages over real hosts on
127.0.0.1, as the ledger service sends PBFT messages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from prsm_node.net.outbox import WRITE_BYTES_MAX, Outbox
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import RequestFailed

from .test_wire import PROTOCOL, two_wires, wait_until


async def reachable(peer: str) -> None:
    """The hosts of `two_wires` are already connected."""


@dataclass
class Link:
    outbox: Outbox
    receiver_id: str
    receiver_scores: PeerScores
    seen: list[Any] = field(default_factory=list)  # what the receiver handled, in order


@contextlib.asynccontextmanager
async def outbox_link(queue_max: int = 1000,
                      connect: Callable[[str], Awaitable[None]] = reachable
                      ) -> AsyncIterator[Link]:
    """An outbox on a connected sender, bound to a nursery, and what its peer receives."""
    async with two_wires() as (sender, receiver, receiver_id, scores), \
            trio.open_nursery() as nursery:
        link = Link(Outbox(sender, PROTOCOL, connect=connect, queue_max=queue_max),
                    receiver_id, scores)

        async def handle(peer: str, payload: Any) -> None:
            link.seen.append(payload)

        receiver.register(PROTOCOL, handle)
        link.outbox.bind(nursery)
        yield link
        nursery.cancel_scope.cancel()


async def test_a_burst_arrives_whole_in_order_and_in_fewer_writes_than_messages() -> None:
    async with outbox_link() as link:
        for number in range(200):  # queued before the sender task first runs
            link.outbox.send(link.receiver_id, number.to_bytes(4, "big") * 10)
        await wait_until(lambda: len(link.seen) == 200)
        assert link.seen == [number.to_bytes(4, "big") * 10 for number in range(200)]
        counters = link.outbox.counters
        assert counters["send_writes"] < 10
        assert counters["sends_dropped"] == counters["sends_failed"] == 0
        assert link.receiver_scores.statistics().rejected_total == 0


async def test_large_messages_are_split_across_writes_and_stay_in_order() -> None:
    async with outbox_link() as link:
        big = [bytes([number]) * (WRITE_BYTES_MAX // 3) for number in range(7)]
        for message in big:
            link.outbox.send(link.receiver_id, message)
        await wait_until(lambda: len(link.seen) == len(big))
        assert link.seen == big
        assert link.outbox.counters["send_writes"] >= 3  # at most two of these fit one write


async def test_a_full_queue_drops_and_counts_what_does_not_fit() -> None:
    async with outbox_link(queue_max=10) as link:
        for number in range(25):
            link.outbox.send(link.receiver_id, bytes([number]))
        await wait_until(lambda: len(link.seen) == 10)
        assert link.seen == [bytes([number]) for number in range(10)]
        assert link.outbox.counters["sends_dropped"] == 15


async def test_a_failed_connect_loses_only_what_was_queued_and_the_next_send_retries() -> None:
    attempts: list[str] = []

    async def down_once(peer: str) -> None:
        attempts.append(peer)
        if len(attempts) == 1:
            raise RequestFailed(peer, PROTOCOL, "test: unreachable")

    async with outbox_link(queue_max=100, connect=down_once) as link:
        link.outbox.send(link.receiver_id, b"lost")
        link.outbox.send(link.receiver_id, b"lost too")
        await wait_until(lambda: link.outbox.counters["sends_failed"] == 2)
        link.outbox.send(link.receiver_id, b"delivered")
        await wait_until(lambda: link.seen == [b"delivered"])
        assert attempts == [link.receiver_id, link.receiver_id]


async def test_a_retired_peer_gets_nothing_more_until_it_is_sent_to_again() -> None:
    async with outbox_link(queue_max=100) as link:
        link.outbox.send(link.receiver_id, b"first")
        await wait_until(lambda: link.seen == [b"first"])
        link.outbox.send(link.receiver_id, b"dropped: queued, then the peer left the set")
        link.outbox.retire(keep=set())
        link.outbox.send(link.receiver_id, b"after")  # a new queue and sender task
        await wait_until(lambda: len(link.seen) == 2)
        assert link.seen == [b"first", b"after"]
