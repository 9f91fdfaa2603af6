"""Framed request/response over long-lived libp2p streams (one stream per peer and protocol).

Why long-lived: on py-libp2p 0.8.1 a new stream costs 7-21 ms while a round trip on an open
one costs 1.5-3 ms (DESIGN.md), so a requester opens one stream per (peer, protocol) and
keeps it, tagging each request with an id so several can be in flight at once.

Envelope (a msgpack array in one frame): `[KIND, request id, payload]`, KIND being
REQUEST, RESPONSE, ERROR (payload: a reason string) or NOTICE (id 0: a one-way message,
never answered). The responder handles the frames of one stream in order; different
streams (peers, protocols) are served concurrently, at most `inbound_requests_max` at a
time. One-way messages (`notify`) are for protocols that need no answer, such as PBFT,
whose replicas retransmit what gets lost: an empty answer to every message cost a frame
each way through Yamux, Noise and both event loops.

Rules: every stream handler catches StreamEOF / StreamReset (an uncaught one tears the
whole libp2p connection down) and closes its stream in `finally`; a malformed frame or
envelope is counted against the peer, which is scored down, and the stream is reset; nothing
a peer sends raises out of this module.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError

from prsm_node.errors import PeerProtocolError
from prsm_node.net.framing import FrameError, encode_frame, read_frame
from prsm_node.net.scores import PeerScores

log = structlog.get_logger(__name__)

REQUEST, RESPONSE, ERROR, NOTICE = 0, 1, 2, 3
IN_FLIGHT_PER_STREAM_MAX = 64
RESET_TIMEOUT_S = 1.0  # resetting a stream whose write was cut off (Wire._write_whole)
ISSUED_REMEMBERED_MAX = 1024
"""Request ids remembered per stream to tell a late answer (after our timeout) from a bogus
one; past it, a very late answer counts as bogus."""
# What a stream can raise when the peer goes away: libp2p's stream errors (StreamEOF,
# StreamReset, ... are IOExceptions), the muxer's own, and trio's on a dead socket.
STREAM_FAILURES = (
    IOException,
    MuxedStreamError,
    MuxedConnError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

Handler = Callable[[str, Any], Awaitable[Any]]


class RequestFailed(Exception):
    """A request to a peer did not get an answer; `reason` says why."""

    def __init__(self, peer: str, protocol: str, reason: str) -> None:
        self.peer, self.protocol, self.reason = peer, protocol, reason
        super().__init__(f"{protocol} request to {peer} failed: {reason}")


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    kind: int = ERROR
    payload: Any = None


@dataclass(slots=True)
class _OutboundStream:
    stream: Any
    pending: dict[int, _Pending] = field(default_factory=dict)
    write_lock: trio.Lock = field(default_factory=trio.Lock)
    # Ids sent on this stream lately: an answer to one that timed out is late, not forged.
    issued: deque[int] = field(default_factory=lambda: deque(maxlen=ISSUED_REMEMBERED_MAX))
    slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(IN_FLIGHT_PER_STREAM_MAX))
    closed: bool = False


def _parse_envelope(peer: str, value: Any) -> tuple[int, int, Any]:
    if not (isinstance(value, list) and len(value) == 3):
        raise PeerProtocolError(peer, "envelope is not a 3-element array")
    kind, request_id, payload = value
    if kind not in (REQUEST, RESPONSE, ERROR, NOTICE) or isinstance(kind, bool):
        raise PeerProtocolError(peer, f"unknown envelope kind {kind!r}")
    if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0:
        raise PeerProtocolError(peer, "request id is not a non-negative integer")
    return kind, request_id, payload


class Wire:
    """Registers protocol handlers and sends requests; owns the outbound streams."""

    def __init__(
        self,
        host: Any,
        *,
        frame_size_max: int,
        request_timeout_s: float,
        inbound_requests_max: int,
        scores: PeerScores,
    ) -> None:
        self._host = host
        self._frame_size_max = frame_size_max
        self._request_timeout_s = request_timeout_s
        self._inbound_limit = trio.CapacityLimiter(inbound_requests_max)
        self._scores = scores
        self._outbound: dict[tuple[str, str], _OutboundStream] = {}
        self._opening: dict[tuple[str, str], trio.Lock] = {}
        self._ids = itertools.count(1)
        self._streams_opened = 0
        self.late_answers = 0
        self._nursery: trio.Nursery | None = None

    def bind(self, nursery: trio.Nursery) -> None:
        """Give the wire the nursery its stream readers run in (the node's root nursery)."""
        self._nursery = nursery

    # -- responder side ---------------------------------------------------------------

    def register(self, protocol: str, handler: Handler) -> None:
        """Serve `protocol`: `handler(peer_id, payload)` returns the response payload
        (dropped for a one-way NOTICE)."""

        async def serve(stream: Any) -> None:
            await self._serve_stream(protocol, handler, stream)

        self._host.set_stream_handler(TProtocol(protocol), serve)

    async def _serve_stream(self, protocol: str, handler: Handler, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        try:
            while True:
                kind, request_id, payload = await self._read_request(peer, stream)
                async with self._inbound_limit:
                    reply = await self._answer(peer, handler, request_id, payload)
                if kind == REQUEST:
                    await stream.write(encode_frame(reply, self._frame_size_max))
        except STREAM_FAILURES:
            pass
        except (FrameError, PeerProtocolError) as error:
            self._scores.penalise(peer, f"{protocol}: {error}")
            await _reset_quietly(stream)
        finally:
            await _close_quietly(stream)

    async def _read_request(self, peer: str, stream: Any) -> tuple[int, int, Any]:
        kind, request_id, payload = _parse_envelope(
            peer, await read_frame(stream, self._frame_size_max)
        )
        if kind not in (REQUEST, NOTICE):
            raise PeerProtocolError(peer, "response sent on a stream it did not open")
        return kind, request_id, payload

    async def _answer(self, peer: str, handler: Handler, request_id: int, payload: Any) -> list:
        try:
            return [RESPONSE, request_id, await handler(peer, payload)]
        except PeerProtocolError as error:
            self._scores.penalise(peer, error.reason)
            return [ERROR, request_id, error.reason]

    # -- requester side ---------------------------------------------------------------

    async def request(self, peer: str, protocol: str, payload: Any) -> Any:
        """Send one request and wait for its response; raises RequestFailed."""
        with trio.move_on_after(self._request_timeout_s) as scope:
            return await self._request(peer, protocol, payload)
        assert scope.cancelled_caught
        raise RequestFailed(peer, protocol, f"no answer within {self._request_timeout_s:g} s")

    async def _request(self, peer: str, protocol: str, payload: Any) -> Any:
        outbound = await self._outbound_stream(peer, protocol)
        async with outbound.slots:
            request_id = next(self._ids)
            outbound.issued.append(request_id)
            pending = outbound.pending[request_id] = _Pending()
            try:
                frame = encode_frame([REQUEST, request_id, payload], self._frame_size_max)
                await self._write_whole(peer, protocol, outbound, frame)  # drops on failure
                await pending.done.wait()
            except STREAM_FAILURES as error:
                raise RequestFailed(peer, protocol, f"stream failed: {error!r}") from None
            finally:
                outbound.pending.pop(request_id, None)
        if pending.kind == ERROR:
            raise RequestFailed(peer, protocol, f"peer answered with an error: {pending.payload}")
        return pending.payload

    async def notify(self, peer: str, protocol: str, payload: Any) -> None:
        """Send a one-way message (NOTICE): returns once the muxer took the frame, which
        says nothing of the peer handling it; raises RequestFailed if the stream is down
        or the write does not finish within the request timeout (a peer not reading)."""
        await self.notify_many(peer, protocol, [payload])

    async def notify_many(self, peer: str, protocol: str, payloads: list[Any]) -> None:
        """`notify` for several messages in one write: one Yamux frame, one Noise message
        and one wake-up of the peer's reader for all of them (prsm_node/net/outbox.py)."""
        with trio.move_on_after(self._request_timeout_s):
            outbound = await self._outbound_stream(peer, protocol)
            frames = b"".join(
                encode_frame([NOTICE, 0, payload], self._frame_size_max) for payload in payloads
            )
            try:
                await self._write_whole(peer, protocol, outbound, frames)  # drops on failure
            except STREAM_FAILURES as error:
                raise RequestFailed(peer, protocol, f"stream failed: {error!r}") from None
            return
        raise RequestFailed(peer, protocol, f"not sent within {self._request_timeout_s:g} s")

    async def _write_whole(self, peer: str, protocol: str, outbound: _OutboundStream,
                           frame: bytes) -> None:
        """Write one frame (or several, joined). A write that ends early (our timeout, a
        failure) may have sent part of it, and the peer would read the next frame's bytes
        as the rest of this one, then blame us for the garbage: the stream is dropped and
        reset instead, and the next message opens a fresh one."""
        async with outbound.write_lock:
            try:
                await outbound.stream.write(frame)
            except BaseException:
                self._drop_outbound(peer, protocol, outbound)
                with trio.CancelScope(shield=True), trio.move_on_after(RESET_TIMEOUT_S):
                    await _reset_quietly(outbound.stream)
                raise

    async def open(self, peer: str, protocol: str) -> None:
        """Open the stream to `peer` for `protocol` now rather than on the first request:
        opening costs a multistream round trip, which a loaded peer answered only after
        ~1.5 s (measured on the ledger benchmark), delaying whatever was sent first."""
        await self._outbound_stream(peer, protocol)

    async def _outbound_stream(self, peer: str, protocol: str) -> _OutboundStream:
        key = (peer, protocol)
        lock = self._opening.setdefault(key, trio.Lock())
        async with lock:
            existing = self._outbound.get(key)
            if existing is not None and not existing.closed:
                return existing
            try:
                stream = await self._host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
            except Exception as error:  # libp2p raises many unrelated types for a failed open
                raise RequestFailed(peer, protocol, f"cannot open stream: {error}") from None
            self._streams_opened += 1
            outbound = self._outbound[key] = _OutboundStream(stream=stream)
            assert self._nursery is not None, "Wire.bind() was not called"
            self._nursery.start_soon(self._read_responses, peer, protocol, outbound)
            return outbound

    async def _read_responses(self, peer: str, protocol: str, outbound: _OutboundStream) -> None:
        try:
            while True:
                value = await read_frame(outbound.stream, self._frame_size_max)
                kind, request_id, payload = _parse_envelope(peer, value)
                pending = outbound.pending.get(request_id)
                if kind in (REQUEST, NOTICE) or (
                        pending is None and request_id not in outbound.issued):
                    raise PeerProtocolError(peer, f"unexpected frame for request {request_id}")
                if pending is None:
                    self.late_answers += 1  # we gave up waiting; answering late is no fault
                    continue
                pending.kind, pending.payload = kind, payload
                pending.done.set()
        except STREAM_FAILURES:
            pass
        except (FrameError, PeerProtocolError) as error:
            self._scores.penalise(peer, f"{protocol}: {error}")
            await _reset_quietly(outbound.stream)
        finally:
            self._drop_outbound(peer, protocol, outbound)
            await _close_quietly(outbound.stream)

    def _drop_outbound(self, peer: str, protocol: str, outbound: _OutboundStream) -> None:
        """Forget a dead stream and wake every request waiting on it (they see ERROR)."""
        outbound.closed = True
        if self._outbound.get((peer, protocol)) is outbound:
            del self._outbound[(peer, protocol)]
        for pending in outbound.pending.values():
            pending.kind, pending.payload = ERROR, "stream closed"
            pending.done.set()

    def forget_peer(self, peer: str) -> None:
        """Called on disconnect: later requests open fresh streams."""
        for key in [key for key in self._outbound if key[0] == peer]:
            self._drop_outbound(key[0], key[1], self._outbound[key])
        for key in [key for key in self._opening if key[0] == peer]:
            if not self._opening[key].locked():
                del self._opening[key]

    def statistics(self) -> dict[str, int]:
        return {
            "outbound_streams": len(self._outbound),
            "streams_opened": self._streams_opened,
            "late_answers": self.late_answers,
        }


async def _reset_quietly(stream: Any) -> None:
    with contextlib.suppress(STREAM_FAILURES):
        await stream.reset()


async def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(STREAM_FAILURES):
        await stream.close()
