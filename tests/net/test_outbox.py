"""prsm_node/net/outbox.py: per-peer queues of one-way messages over real hosts on
127.0.0.1, as the ledger service sends PBFT messages."""

from __future__ import annotations

from typing import Any

import trio

from prsm_node.net.outbox import WRITE_BYTES_MAX, Outbox
from prsm_node.net.wire import RequestFailed

from .test_wire import PROTOCOL, two_wires, wait_until


async def reachable(peer: str) -> None:
    """The hosts of `two_wires` are already connected."""


def receiving(receiver: Any) -> list[Any]:
    seen: list[Any] = []

    async def handle(peer: str, payload: Any) -> None:
        seen.append(payload)

    receiver.register(PROTOCOL, handle)
    return seen


async def test_a_burst_arrives_whole_in_order_and_in_fewer_writes_than_messages() -> None:
    async with two_wires() as (sender, receiver, receiver_id, scores), trio.open_nursery() as n:
        seen = receiving(receiver)
        outbox = Outbox(sender, PROTOCOL, connect=reachable, queue_max=1000)
        outbox.bind(n)
        for number in range(200):  # queued before the sender task first runs
            outbox.send(receiver_id, number.to_bytes(4, "big") * 10)
        await wait_until(lambda: len(seen) == 200)
        assert seen == [number.to_bytes(4, "big") * 10 for number in range(200)]
        assert outbox.counters["send_writes"] < 10
        assert outbox.counters["sends_dropped"] == outbox.counters["sends_failed"] == 0
        assert scores.statistics().rejected_total == 0
        n.cancel_scope.cancel()


async def test_large_messages_are_split_across_writes_and_stay_in_order() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _), trio.open_nursery() as n:
        seen = receiving(receiver)
        outbox = Outbox(sender, PROTOCOL, connect=reachable, queue_max=1000)
        outbox.bind(n)
        big = [bytes([number]) * (WRITE_BYTES_MAX // 3) for number in range(7)]
        for message in big:
            outbox.send(receiver_id, message)
        await wait_until(lambda: len(seen) == len(big))
        assert seen == big
        assert outbox.counters["send_writes"] >= 3  # at most two of these fit one write
        n.cancel_scope.cancel()


async def test_a_full_queue_drops_and_counts_what_does_not_fit() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _), trio.open_nursery() as n:
        seen = receiving(receiver)
        outbox = Outbox(sender, PROTOCOL, connect=reachable, queue_max=10)
        outbox.bind(n)
        for number in range(25):
            outbox.send(receiver_id, bytes([number]))
        await wait_until(lambda: len(seen) == 10)
        assert seen == [bytes([number]) for number in range(10)]
        assert outbox.counters["sends_dropped"] == 15
        n.cancel_scope.cancel()


async def test_a_failed_connect_loses_only_what_was_queued_and_the_next_send_retries() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _), trio.open_nursery() as n:
        seen = receiving(receiver)
        attempts: list[str] = []

        async def down_once(peer: str) -> None:
            attempts.append(peer)
            if len(attempts) == 1:
                raise RequestFailed(peer, PROTOCOL, "test: unreachable")

        outbox = Outbox(sender, PROTOCOL, connect=down_once, queue_max=100)
        outbox.bind(n)
        outbox.send(receiver_id, b"lost")
        outbox.send(receiver_id, b"lost too")
        await wait_until(lambda: outbox.counters["sends_failed"] == 2)
        outbox.send(receiver_id, b"delivered")
        await wait_until(lambda: seen == [b"delivered"])
        assert attempts == [receiver_id, receiver_id]
        n.cancel_scope.cancel()


async def test_a_retired_peer_gets_nothing_more_until_it_is_sent_to_again() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _), trio.open_nursery() as n:
        seen = receiving(receiver)
        outbox = Outbox(sender, PROTOCOL, connect=reachable, queue_max=100)
        outbox.bind(n)
        outbox.send(receiver_id, b"first")
        await wait_until(lambda: seen == [b"first"])
        outbox.send(receiver_id, b"dropped: queued, then the peer left the set")
        outbox.retire(keep=set())
        outbox.send(receiver_id, b"after")  # a new queue and sender task
        await wait_until(lambda: len(seen) == 2)
        assert seen == [b"first", b"after"]
        n.cancel_scope.cancel()
