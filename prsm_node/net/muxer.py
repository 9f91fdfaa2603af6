"""Yamux whose frame writes a caller's cancellation cannot tear in half.

The trap (py-libp2p 0.8.1): `Yamux._write_frame` takes its write lock and calls the Noise
session's `write_msg`, which encrypts the frame (taking the next nonce: the nonce is a
counter, never sent) and only then awaits the TCP stream's own write lock and
`send_all`. A caller whose cancel scope expires at that await (a request under
`fail_after`, a dial timeout, a handler being cancelled) raises `Cancelled` after its
nonce was used but before its bytes left, or halfway through `send_all`. The next frame
goes out under the following nonce and the peer's decryption fails ("Failed
authentication of message") or its framing is lost: the whole connection dies, with every
stream on it and the peer's GossipSub mesh membership. Measured on the registry
benchmark's 30-node devnet (2 cores, saturated), the first 138 s, 2026-11-26: 2,512
connection ends registered (870 would be each of the 435 peer pairs once), 1,737 ends
torn down by a read error, 984 of them that decryption failure (most of the rest: the
peer's end of such a connection, seen as a clean close or a reset). With this class,
110 s: 870 ends registered, no read error, no connection closed.
`tests/net/test_muxer.py` parks a write right after encryption and cancels it.

The rule here: waiting for the write lock stays cancellable (nothing is encrypted yet);
from encryption to the last byte the write is shielded, bounded by
`FRAME_WRITE_TIMEOUT_S`. That is how go-yamux behaves: one writer sends whole frames and a
stalled write closes the session (`ConnectionWriteTimeout`, 10 s). A write that times
out has left a partial frame on the wire, so the connection is closed.

Installing it: `MuxerMultistream.new_conn` builds `Yamux(...)` by name whenever
/yamux/1.0.0 is negotiated and ignores the class given in `muxer_opt`, so `install` puts
a copy of that method on the host's own upgrader that builds `WholeFrameYamux` instead
(the library's is a negotiation plus a constructor call; only our hosts are affected).

Window credit (the second trap): py-libp2p 0.8.1 returns a stream's receive-window credit
after nearly every read, even with its switch `PY_YAMUX_RELEASE_ON_READ=0` (the "partial
slack" branch of `_auto_tune_and_send_window_update` fires whenever any credit is
outstanding), so every small message cost a WINDOW_UPDATE frame back: a second Noise
message, socket send and wake-up on both ends. Measured with two hosts in one process, a
200-byte notice and its handling cost ~580 us of CPU with 2.0 socket sends per message.
With `half_window_credit` (the default, `network.yamux_window_update_every_read = false`)
each stream returns credit as go-yamux does: once at least half the window has been read.
`tests/net/test_muxer.py` counts the frames.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import structlog
import trio
from libp2p.stream_muxer.exceptions import MuxedConnUnavailable
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = structlog.get_logger(__name__)

FRAME_WRITE_TIMEOUT_S = 10.0
"""go-yamux's ConnectionWriteTimeout: a peer that takes no bytes for this long is gone."""


class WholeFrameYamux(Yamux):
    """Yamux with `_write_frame` (the one path every frame takes) made cancellation-safe."""

    async def _write_frame(self, data: bytes) -> None:
        async with self._write_lock:  # a cancelled wait here has sent and encrypted nothing
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FRAME_WRITE_TIMEOUT_S) as timer:
                    await self.secured_conn.write(data)
                if timer.cancelled_caught:
                    log.warning("net.frame_write_timeout", peer=self.peer_id.to_base58())
                    with contextlib.suppress(Exception):  # the raw close raises varied types
                        await self.secured_conn.close()
        if timer.cancelled_caught:
            raise MuxedConnUnavailable("frame write timed out; connection closed")
        await trio.lowlevel.checkpoint()  # a cancel that arrived meanwhile is delivered here

    half_window_credit = True

    async def open_stream(self) -> Any:
        return self._with_credit_policy(await super().open_stream())

    async def accept_stream(self) -> Any:
        return self._with_credit_policy(await super().accept_stream())

    def _with_credit_policy(self, stream: Any) -> Any:
        if self.half_window_credit:  # the library calls this method after every read
            stream._auto_tune_and_send_window_update = functools.partial(
                _credit_at_half_window, stream)
        return stream


async def _credit_at_half_window(stream: Any, *, bytes_read: int = 0) -> None:
    """go-yamux's `sendWindowUpdate`: nothing until the credit to return (the window less
    what is free or still buffered) reaches half the window, then all of it at once, with
    py-libp2p's window growth (`_apply_autotune_epoch`) as its own full update does."""
    async with stream.window_lock:
        buffered = len(stream.conn.stream_buffers.get(stream.stream_id, b""))
        owed = stream.target_recv_window - (stream.recv_window + buffered)
        if owed <= 0 or owed < stream._grow_threshold():
            return
        increment = stream._grow_to_delta(buffered) + stream._apply_autotune_epoch(buffered)
    await stream.send_window_update(increment, skip_lock=True)


def install(host: Any, *, half_window_credit: bool = True) -> None:
    """Make `host` build `WholeFrameYamux` for every connection it upgrades (returning
    window credit at half the window unless `half_window_credit` is false)."""
    multistream = host.get_network().upgrader.muxer_multistream

    async def new_conn(conn: Any, peer_id: Any) -> Any:
        protocol, transport_class = await multistream._selector.select(
            conn, conn.is_initiator, multistream.negotiate_timeout
        )
        if protocol == YAMUX_PROTOCOL_ID:
            muxed = WholeFrameYamux(conn, peer_id, is_initiator=conn.is_initiator)
            muxed.half_window_credit = half_window_credit
        else:
            muxed = transport_class(conn, peer_id)
        return multistream._annotate_connection(muxed, conn, protocol)

    multistream.new_conn = new_conn
