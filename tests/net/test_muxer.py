"""prsm_node/net/muxer.py: a frame write that its caller's cancellation reaches after Noise
encrypted it must still go out whole. Real hosts on 127.0.0.1, TCP + Noise + Yamux."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from prsm_node.config import NetworkConfig
from prsm_node.net.host import build_host
from prsm_node.net.muxer import WholeFrameYamux

from .test_wire import PROTOCOL as WIRE_PROTOCOL
from .test_wire import two_wires

PROTOCOL = TProtocol("/test/collect/1.0.0")
DEADLINE_S = 30
LISTEN = Multiaddr("/ip4/127.0.0.1/tcp/0")


@contextlib.asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[Any, Any, list[bytes]]]:
    """(dialer, listener, what the listener read on PROTOCOL), connected."""
    network = replace(NetworkConfig(), listen=("/ip4/127.0.0.1/tcp/0",))
    dialer, listener = (
        build_host(bytes(SigningKey.generate()), network, trio.open_memory_channel(256)[0])
        for _ in range(2)
    )
    received: list[bytes] = []

    async def collect(stream: Any) -> None:
        try:
            while True:
                received.append(await stream.read(1024))
        except (StreamEOF, StreamReset):
            pass
        finally:
            await stream.close()

    listener.set_stream_handler(PROTOCOL, collect)
    async with dialer.run(listen_addrs=[LISTEN]), listener.run(listen_addrs=[LISTEN]):
        await dialer.connect(info_from_p2p_addr(listener.get_addrs()[0]))
        yield dialer, listener, received


async def wait_until(condition: Any) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.01)


async def test_every_connection_uses_the_whole_frame_muxer() -> None:
    async with two_hosts() as (dialer, listener, _):
        for host, other in ((dialer, listener), (listener, dialer)):
            (connection,) = host.get_network().get_connections(other.get_id())
            assert isinstance(connection.muxed_conn, WholeFrameYamux)


async def test_a_write_cancelled_after_encryption_leaves_the_connection_usable() -> None:
    async with two_hosts() as (dialer, listener, received):
        stream = await dialer.new_stream(listener.get_id(), [PROTOCOL])
        (connection,) = dialer.get_network().get_connections(listener.get_id())
        # Noise encrypts (and uses a nonce) before it takes the TCP stream's write lock:
        # holding that lock parks the write right after encryption, as a full socket
        # buffer does, and the caller's cancellation then lands there.
        muxed = connection.muxed_conn
        tcp = muxed.secured_conn.conn.conn.stream
        writer: list[object] = []

        async def write_parked() -> None:
            writer.append(trio.lowlevel.current_task())
            await stream.write(b"parked")

        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await tcp.write_lock.acquire()
                nursery.start_soon(write_parked)
                with trio.fail_after(DEADLINE_S):
                    # Park our frame, not another one (identify's answer, say): the frame
                    # waiting for the TCP lock is the one holding Yamux's lock.
                    while not (
                        muxed._write_lock.statistics().owner in writer
                        and tcp.write_lock.statistics().tasks_waiting == 1
                    ):
                        if tcp.write_lock.statistics().tasks_waiting:
                            tcp.write_lock.release()  # let the other frame out
                            await tcp.write_lock.acquire()
                        await trio.sleep(0.01)
                scope.cancel()
                tcp.write_lock.release()
        await stream.write(b"after")
        await wait_until(lambda: b"after" in b"".join(received))
        assert b"".join(received) == b"parkedafter"
        assert dialer.get_network().get_connections(listener.get_id()) == [connection]


@pytest.mark.parametrize("every_read", [False, True])
async def test_window_credit_goes_back_at_half_the_window_unless_configured_otherwise(
        monkeypatch: pytest.MonkeyPatch, every_read: bool) -> None:
    """Small messages, each handled before the next is sent, as PBFT votes are: with
    go-yamux's rule one TCP write per message; with py-libp2p's (every read returns
    credit) a WINDOW_UPDATE write back for each. Then bulk notices, which only flow if
    the credit does come back."""
    writes = [0]
    write = TrioTCPStream.write

    async def counted(self: TrioTCPStream, data: bytes) -> None:
        writes[0] += 1
        await write(self, data)

    monkeypatch.setattr(TrioTCPStream, "write", counted)
    network = replace(NetworkConfig(), yamux_window_update_every_read=every_read)
    async with two_wires(network) as (sender, receiver, receiver_id, _):
        handled = [trio.Event()]
        sizes: list[int] = []

        async def handle(peer: str, payload: Any) -> None:
            sizes.append(len(payload))
            handled[0].set()

        receiver.register(WIRE_PROTOCOL, handle)
        for number in range(201):
            if number == 1:
                writes[0] = 0  # the stream is open: count the messages' writes only
            handled[0] = trio.Event()
            await sender.notify(receiver_id, WIRE_PROTOCOL, b"v" * 200)
            with trio.fail_after(DEADLINE_S):
                await handled[0].wait()
        if every_read:
            assert writes[0] >= 360
        else:
            assert writes[0] <= 210
        for _ in range(4):  # 3.6 MB through a 256 KiB window
            await sender.notify(receiver_id, WIRE_PROTOCOL, b"b" * (900 * 1024))
        await wait_until(lambda: len(sizes) == 205)
        assert sizes[-4:] == [900 * 1024] * 4
