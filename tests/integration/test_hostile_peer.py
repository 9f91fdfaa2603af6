"""A peer that sends malformed frames is rejected, counted and cut off; the node survives.

The hostile peer is a real libp2p host in this test process, built by the node's own
host builder, talking to a real node process over TCP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from dht.messages import MessageKind, Request, encode_message
from dht.records import RecordBody, SignedRecord, pk_key
from prsm_node.devnet import Devnet
from prsm_node.dht_service import DHT_PROTOCOL, unix_ms
from prsm_node.net.framing import encode_frame
from prsm_node.net.host import build_host
from prsm_node.net.pex import PEX_PROTOCOL
from prsm_node.net.ping import PING_PROTOCOL

from .conftest import TEST_NETWORK

pytestmark = pytest.mark.multiprocess

GARBAGE_FRAMES = [
    struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # 0xc1 is never valid msgpack
    struct.pack(">I", 1 << 30),  # a 1 GiB length: must be refused before reading
    encode_frame({"not": "an envelope"}, 1024),
    encode_frame([0, 1, {"nonce": "not an int"}], 1024),
    encode_frame([7, 1, None], 1024),
    struct.pack(">I", 5) + msgpack.packb(msgpack.ExtType(1, b"abc")),
]


async def node_statistics(devnet: Devnet) -> dict:
    return await trio.to_thread.run_sync(devnet.call, 0, "node_statistics")


async def wait_rejected(devnet: Devnet, count: int) -> dict:
    with trio.fail_after(30):
        while (stats := await node_statistics(devnet))["scores"]["rejected_total"] < count:
            await trio.sleep(0.05)
    return stats


@contextlib.asynccontextmanager
async def attacker_connected_to(devnet: Devnet) -> AsyncIterator[tuple[Any, Any]]:
    """A libp2p host of our own make, connected to node0: (host, node0's PeerInfo)."""
    send, _receive = trio.open_memory_channel(64)
    network = replace(TEST_NETWORK, listen=("/ip4/127.0.0.1/tcp/0",))
    attacker = build_host(bytes(SigningKey.generate()), network, send)
    async with attacker.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        target = info_from_p2p_addr(Multiaddr(devnet.nodes[0].address))
        await attacker.connect(target)
        yield attacker, target


async def send_frame(attacker: Any, target: Any, protocol: str, frame: bytes) -> None:
    stream = await attacker.new_stream(target.peer_id, [TProtocol(protocol)])
    await stream.write(frame)


async def test_malformed_frames_are_counted_and_the_node_keeps_serving(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = await trio.to_thread.run_sync(make_devnet, 1)
    async with attacker_connected_to(devnet) as (attacker, target):
        for count, frame in enumerate(GARBAGE_FRAMES, start=1):
            await send_frame(attacker, target, PING_PROTOCOL, frame)
            await wait_rejected(devnet, count)
        bad_pex = {"addrs": ["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWsomeoneelse"]}
        await send_frame(attacker, target, PEX_PROTOCOL, encode_frame([0, 1, bad_pex], 4096))
        stats = await wait_rejected(devnet, len(GARBAGE_FRAMES) + 1)
    assert stats["scores"]["peers_penalised"] == 1
    info = await trio.to_thread.run_sync(devnet.call, 0, "node_info")
    assert info["peer_id"] == devnet.nodes[0].peer_id


async def test_a_peer_past_the_score_floor_is_disconnected(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = await trio.to_thread.run_sync(make_devnet, 1)
    async with attacker_connected_to(devnet) as (attacker, target):
        for count in range(1, 11):  # ten penalties of 10 reach the floor of -100
            await send_frame(attacker, target, PING_PROTOCOL, GARBAGE_FRAMES[0])
            await wait_rejected(devnet, count)
        with trio.fail_after(30):
            while attacker.get_network().get_connections(target.peer_id):
                await trio.sleep(0.05)
        stats = await node_statistics(devnet)
        assert stats["scores"]["peers_banned"] == 1
        assert stats["peers_connected"] == 0
        with trio.fail_after(30):  # a banned peer that dials again is turned away
            with contextlib.suppress(Exception):
                await attacker.connect(target)
            while attacker.get_network().get_connections(target.peer_id):
                await trio.sleep(0.05)
        assert (await node_statistics(devnet))["peers_connected"] == 0


async def test_forged_and_malformed_dht_requests_are_rejected_and_counted(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = await trio.to_thread.run_sync(make_devnet, 1)
    victim_key = SigningKey.generate().verify_key.encode()
    body = RecordBody(
        key=pk_key(victim_key),  # claims another key's namespace
        value=b"mine now",
        seq=1,
        expires_at_ms=unix_ms() + 60_000,
        publisher=b"x",
    )
    forged = SignedRecord(body=body, signer=victim_key, sig=bytes(64))
    put = Request(request_id=1, kind=MessageKind.PUT_VALUE, key=body.key, record=forged)
    frames = [
        encode_frame([0, 1, encode_message(put)], 1 << 20),
        encode_frame([0, 2, b"\xc1 not msgpack"], 1 << 20),
        encode_frame([0, 3, {"not": "bytes"}], 1 << 20),
    ]
    async with attacker_connected_to(devnet) as (attacker, target):
        for frame in frames:
            await send_frame(attacker, target, DHT_PROTOCOL, frame)
        with trio.fail_after(30):
            while True:
                table = await trio.to_thread.run_sync(devnet.call, 0, "dht_table")
                stats = await node_statistics(devnet)
                # The DHT core judges the two DHT messages; the shell refuses the non-frame
                # and the frame the core could not answer.
                if (
                    table["counters"]["hostile_inputs"] >= 2
                    and stats["scores"]["rejected_total"] >= 2
                ):
                    break
                await trio.sleep(0.05)
        key = body.key.decode()
        got = await trio.to_thread.run_sync(devnet.call, 0, "dht_get", {"key": key})
    assert got["found"] is False
    assert table["records_stored"] == 0
    assert table["hostile_by_reason"].get("bad_signature") == 1, table["hostile_by_reason"]
    assert table["counters"]["hostile_inputs"] == 2
    assert stats["scores"]["rejected_total"] == 2
