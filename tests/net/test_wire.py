"""prsm_node/net/wire.py: requests and one-way notices over real hosts on 127.0.0.1
(TCP + Noise + Yamux), the way the node's services use them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from prsm_node.config import NetworkConfig
from prsm_node.errors import PeerProtocolError
from prsm_node.net.framing import encode_frame
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import NOTICE, RequestFailed, Wire

from .hosts import wired_host

PROTOCOL = "/test/wire/1.0.0"
DEADLINE_S = 30


@contextlib.asynccontextmanager
async def two_wires(network: NetworkConfig | None = None
                    ) -> AsyncIterator[tuple[Wire, Wire, str, PeerScores]]:
    """(sender's wire, receiver's wire, receiver's peer id, receiver's scores), connected."""
    receiver_scores = PeerScores()
    async with wired_host(network) as (sender_host, sender), \
            wired_host(network, scores=receiver_scores) as (receiver_host, receiver):
        await sender_host.connect(info_from_p2p_addr(receiver_host.get_addrs()[0]))
        yield sender, receiver, receiver_host.get_id().to_base58(), receiver_scores


async def wait_until(condition: Any) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.01)


async def test_notices_arrive_in_order_unanswered_and_requests_still_get_answers() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _):
        seen: list[Any] = []

        async def handle(peer: str, payload: Any) -> Any:
            seen.append(payload)
            return ["echo", payload]

        receiver.register(PROTOCOL, handle)
        for number in range(50):
            await sender.notify(receiver_id, PROTOCOL, number)
        # A request on the same stream, after the notices: its answer is the first frame
        # back. Had a notice been answered, that answer would arrive first and fail the
        # stream as an unexpected frame.
        assert await sender.request(receiver_id, PROTOCOL, "last") == ["echo", "last"]
        assert seen == [*range(50), "last"]
        assert sender.late_answers == 0
        assert sender.statistics()["outbound_streams"] == 1


async def test_a_notice_the_handler_refuses_scores_the_peer_and_the_stream_goes_on() -> None:
    async with two_wires() as (sender, receiver, receiver_id, scores):
        seen: list[Any] = []

        async def handle(peer: str, payload: Any) -> Any:
            if payload == "bad":
                raise PeerProtocolError(peer, "test: a bad notice")
            seen.append(payload)
            return None

        receiver.register(PROTOCOL, handle)
        await sender.notify(receiver_id, PROTOCOL, "bad")
        await sender.notify(receiver_id, PROTOCOL, "good")
        await wait_until(lambda: seen == ["good"])
        assert scores.statistics().rejected_total == 1


async def test_a_notice_where_an_answer_is_due_is_a_protocol_error() -> None:
    async with two_wires() as (sender, receiver, receiver_id, _):
        async def answer_with_a_notice(stream: Any) -> None:
            await stream.read(1 << 16)  # the request
            await stream.write(encode_frame([NOTICE, 0, "not an answer"], 1 << 20))
            await trio.sleep_forever()

        receiver._host.set_stream_handler(TProtocol(PROTOCOL), answer_with_a_notice)
        with trio.fail_after(DEADLINE_S):
            try:
                await sender.request(receiver_id, PROTOCOL, "question")
            except RequestFailed as error:
                assert "stream closed" in error.reason
            else:
                raise AssertionError("a notice was taken for an answer")


async def test_a_write_cut_off_by_the_timeout_never_garbles_the_next_message() -> None:
    """A receiver that stops reading fills the stream's window; the sender's notice then
    times out midway through its frame. The next notice must arrive whole, and the
    honest sender must not be scored down for a garbled stream."""
    async with two_wires() as (sender, receiver, receiver_id, scores):
        sender._request_timeout_s = 0.5
        resume = trio.Event()
        seen: list[Any] = []

        async def stall_on_the_first(peer: str, payload: Any) -> Any:
            if not seen:
                await resume.wait()  # stop reading this stream: its window fills
            seen.append(payload if isinstance(payload, str) else len(payload))
            return None

        receiver.register(PROTOCOL, stall_on_the_first)
        big = b"x" * (900 * 1024)
        cut_off = False
        with trio.fail_after(DEADLINE_S):
            while not cut_off:
                try:
                    await sender.notify(receiver_id, PROTOCOL, big)
                except RequestFailed:
                    cut_off = True
        resume.set()
        await sender.notify(receiver_id, PROTOCOL, "after")
        await wait_until(lambda: "after" in seen)
        assert scores.statistics().rejected_total == 0
        assert all(item == len(big) for item in seen[:-1])  # nothing half-read or garbled
