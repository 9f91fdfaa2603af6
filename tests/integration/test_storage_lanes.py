"""Transfer lanes: real lane processes fetching from real libp2p hosts in this test process,
and a node whose lane cannot dial a provider.

A provider here is a host from the node's own builder serving ``/prsm/blocks/1.0.0`` from a
dict, honestly or not; the lanes are ``prsm_node.storage_lane`` processes started by a
``TransferLanes`` as the node starts them.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from dht.messages import MessageKind, Request
from dht.messages import encode_message as encode_dht_message
from dht.peer import PeerInfo
from prsm_node.devnet import Devnet, wait_for
from prsm_node.dht_service import DHT_PROTOCOL
from prsm_node.net.host import build_host
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import Wire
from prsm_node.storage_fetch import BLOCKS_PROTOCOL, STATUS_OK, STATUS_UNREACHABLE
from prsm_node.storage_lanes import TransferLanes, lanes_wanted
from storage.cid import Cid, raw_cid
from storage.exchange_messages import (
    BlockReply,
    DontHave,
    WantBlocks,
    answer_want,
    decode_message,
    encode_message,
)
from storage.unixfs import build_bytes
from tests.net.hosts import wired_host

from .conftest import TEST_NETWORK
from .test_storage_exchange import storage_devnet

pytestmark = pytest.mark.multiprocess

MIB = 1024 * 1024
DEADLINE_S = 60


@contextlib.asynccontextmanager
async def provider(blocks: dict[Cid, bytes], *, corrupt: bool = False,
                   hold: trio.Event | None = None) -> AsyncIterator[tuple[str, tuple[str, ...],
                                                                          list[str]]]:
    """(peer id, addresses, peers that asked) of a host serving ``blocks``; ``corrupt``
    appends a byte to every block, ``hold`` keeps answers back until it is set."""
    asked: list[str] = []

    async def serve(peer: str, payload: Any) -> list[bytes]:
        want = decode_message(payload)
        assert isinstance(want, WantBlocks)
        asked.append(peer)
        if hold is not None:
            await hold.wait()
        replies = answer_want(want, blocks.get)
        if corrupt:
            replies = [BlockReply(request_id=r.request_id, cid=r.cid, data=r.data + b"!")
                       if isinstance(r, BlockReply) else r for r in replies]
        return [encode_message(reply) for reply in replies]

    async with wired_host(frame_size_max=2 * MIB) as (host, wire):
        wire.register(BLOCKS_PROTOCOL, serve)
        addresses = tuple(str(address) for address in host.get_addrs())
        hosts[host.get_id().to_base58()] = host
        yield host.get_id().to_base58(), addresses, asked


@contextlib.asynccontextmanager
async def running_lanes(temp_dir: Path, count: int,
                        idle_close_s: float = 30) -> AsyncIterator[TransferLanes]:
    lanes = TransferLanes(count=count, temp_dir=temp_dir, frame_size_max=2 * MIB,
                          request_timeout_s=20, durable=False, idle_close_s=idle_close_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        await poll(lambda: lanes.statistics()["lanes_running"] == count, "the lanes ready")
        yield lanes
        nursery.cancel_scope.cancel()


async def poll(condition: Callable[[], bool], what: str) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():
            await trio.sleep(0.05)
    assert condition(), what


hosts: dict[str, Any] = {}  # provider peer id -> its host, for connection checks


def some_blocks(count: int, size: int = 200_000) -> dict[Cid, bytes]:
    datas = [os.urandom(size) for _ in range(count)]
    return {raw_cid(data): data for data in datas}


async def test_lanes_stage_verified_blocks_and_spread_providers_over_lanes(
    short_dir: Path,
) -> None:
    blocks = some_blocks(6)
    cids = list(blocks)
    async with provider(blocks) as (p1, a1, asked1), provider(blocks) as (p2, a2, asked2), \
            running_lanes(short_dir, 2) as lanes:
        answers = {}

        async def fetch(peer: str, addresses: tuple[str, ...], cid: Cid) -> None:
            answers[cid] = await lanes.request(peer, addresses, cid)

        async with trio.open_nursery() as nursery:
            for index, cid in enumerate(cids):
                peer, addresses = (p1, a1) if index % 2 else (p2, a2)
                nursery.start_soon(fetch, peer, addresses, cid)
        for cid in cids:
            answer = answers[cid]
            assert answer is not None and answer.status == STATUS_OK and not answer.frames
            [staged] = answer.staged
            assert staged.cid == cid and staged.size == len(blocks[cid]) and staged.node is None
            assert (short_dir / staged.temp_name).read_bytes() == blocks[cid]
        # Each provider saw one lane, and not the same one: the two lanes shared the work.
        assert len(set(asked1)) == len(set(asked2)) == 1 and set(asked1) != set(asked2)
        assert lanes.statistics()["lanes_started"] == 2


async def test_a_wrong_block_or_dont_have_comes_back_as_the_frame(short_dir: Path) -> None:
    blocks = some_blocks(1)
    [cid] = blocks
    missing = raw_cid(b"nobody has this")
    async with provider(blocks, corrupt=True) as (peer, addresses, _asked), \
            running_lanes(short_dir, 1) as lanes:
        wrong = await lanes.request(peer, addresses, cid)
        absent = await lanes.request(peer, addresses, missing)
    assert wrong is not None and wrong.status == STATUS_OK and not wrong.staged
    [frame] = wrong.frames
    reply = decode_message(frame)
    assert isinstance(reply, BlockReply) and reply.data == blocks[cid] + b"!"
    assert absent is not None and not absent.staged
    assert isinstance(decode_message(absent.frames[0]), DontHave)
    assert list(short_dir.iterdir()) == []  # nothing staged for either


async def test_an_unreachable_provider_is_reported_as_such(short_dir: Path) -> None:
    async with running_lanes(short_dir, 1) as lanes:
        # A peer id that nobody serves, at an address where nothing listens.
        async with provider({}) as (peer, _addresses, _asked):
            pass
        answer = await lanes.request(peer, ("/ip4/127.0.0.1/tcp/9",), raw_cid(b"x"))
    assert answer is not None and answer.status == STATUS_UNREACHABLE


async def test_a_killed_lane_fails_its_wants_and_the_next_want_starts_it_again(
    short_dir: Path,
) -> None:
    blocks = some_blocks(2)
    first, second = blocks
    hold = trio.Event()
    async with provider(blocks, hold=hold) as (peer, addresses, asked), \
            running_lanes(short_dir, 1) as lanes:
        outcome: list[Any] = []

        async def fetch_first() -> None:
            outcome.append(await lanes.request(peer, addresses, first))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch_first)
            await poll(lambda: bool(asked), "the lane asking the provider")
            [lane] = lanes._lanes
            os.kill(lane.process.pid, signal.SIGKILL)
        assert outcome == [None]  # no lane: the fetch would ask in-process
        assert await lanes.request(peer, addresses, second) is None  # not yet back
        hold.set()
        await poll(lambda: lanes.statistics()["lanes_running"] == 1, "the lane started again")
        again = await lanes.request(peer, addresses, second)
        assert again is not None and again.status == STATUS_OK
        assert (short_dir / again.staged[0].temp_name).read_bytes() == blocks[second]
        statistics = lanes.statistics()
        assert statistics["lanes_started"] == 2 and statistics["lanes_died"] == 1


async def test_an_answer_nobody_waits_for_leaves_no_file(short_dir: Path) -> None:
    blocks = some_blocks(1)
    [cid] = blocks
    hold = trio.Event()
    async with provider(blocks, hold=hold) as (peer, addresses, asked), \
            running_lanes(short_dir, 1) as lanes:
        scope = trio.CancelScope()

        async def give_up() -> None:
            with scope:
                await lanes.request(peer, addresses, cid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_up)
            await poll(lambda: bool(asked), "the lane asking the provider")
            scope.cancel()
        hold.set()
        await poll(lambda: lanes.orphans_removed == 1, "the orphaned file removed")
        assert list(short_dir.iterdir()) == []


async def test_a_lane_hangs_up_on_a_provider_it_no_longer_asks(short_dir: Path) -> None:
    blocks = some_blocks(1)
    async with provider(blocks) as (peer, addresses, asked), \
            running_lanes(short_dir, 1, idle_close_s=0.5) as lanes:
        answer = await lanes.request(peer, addresses, next(iter(blocks)))
        assert answer is not None and answer.status == STATUS_OK
        network = hosts[peer].get_network()
        lane_peer = ID.from_base58(asked[0])
        assert network.get_connections(lane_peer)
        await poll(lambda: not network.get_connections(lane_peer), "the lane hanging up")


async def test_stopping_ends_every_lane_process(short_dir: Path) -> None:
    blocks = some_blocks(1)
    async with provider(blocks) as (peer, addresses, _asked):
        async with running_lanes(short_dir, 2) as lanes:
            answer = await lanes.request(peer, addresses, next(iter(blocks)))
            assert answer is not None and answer.status == STATUS_OK
            processes = [lane.process for lane in lanes._lanes if lane.process is not None]
        assert processes and all(process.returncode is not None for process in processes)


async def test_a_want_never_waits_for_a_lane_to_start(short_dir: Path) -> None:
    lanes = TransferLanes(count=1, temp_dir=short_dir, frame_size_max=2 * MIB,
                          request_timeout_s=20, durable=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(lanes.run)
        assert lanes.statistics()["lanes_running"] == 0  # its interpreter is starting
        assert await lanes.request("12D3KooWPeer", (), raw_cid(b"x")) is None
        nursery.cancel_scope.cancel()


def test_the_default_lane_count_follows_the_cores() -> None:
    assert [lanes_wanted(-1, cores) for cores in (None, 1, 2, 3, 4, 5, 8, 64)] == \
        [0, 0, 0, 0, 1, 2, 4, 4]
    assert lanes_wanted(0, 64) == 0 and lanes_wanted(3, 1) == 3


@contextlib.asynccontextmanager
async def provider_behind_nat(devnet: Devnet, index: int, blocks: dict[Cid, bytes],
                              root: Cid) -> AsyncIterator[tuple[str, list[str]]]:
    """(peer id, peers that asked) of a host that listens nowhere: it dials node ``index``,
    announces ``root`` with an address where nothing listens, and serves ``blocks`` on the
    connection it opened, as a provider behind a NAT does."""
    asked: list[str] = []

    async def serve(peer: str, payload: Any) -> list[bytes]:
        want = decode_message(payload)
        assert isinstance(want, WantBlocks)
        asked.append(peer)
        return [encode_message(reply) for reply in answer_want(want, blocks.get)]

    network = replace(TEST_NETWORK, listen=())
    host = build_host(bytes(SigningKey.generate()), network, trio.open_memory_channel(256)[0])
    async with host.run(listen_addrs=[]), trio.open_nursery() as nursery:
        wire = Wire(host, frame_size_max=4 * MIB, request_timeout_s=10, inbound_requests_max=8,
                    scores=PeerScores())
        wire.bind(nursery)
        wire.register(BLOCKS_PROTOCOL, serve)
        await host.connect(info_from_p2p_addr(Multiaddr(devnet.nodes[index].address)))
        own = PeerInfo(peer_id=host.get_id().to_bytes(),
                       addrs=(f"/ip4/127.0.0.1/tcp/9/p2p/{host.get_id()}",))
        request = Request(request_id=1, kind=MessageKind.ADD_PROVIDER, key=root.to_bytes(),
                          provider=own)
        await wire.request(devnet.nodes[index].peer_id, DHT_PROTOCOL,
                           encode_dht_message(request))
        yield host.get_id().to_base58(), asked
        nursery.cancel_scope.cancel()


async def test_a_provider_no_lane_can_dial_is_fetched_from_in_process(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = await trio.to_thread.run_sync(
        lambda: storage_devnet(make_devnet, 1, fetch_lanes=1))

    def rpc(method: str, params: dict[str, Any] | None = None) -> Any:
        with devnet.client(0, timeout_s=60) as client:
            return client.call(method, params)

    await trio.to_thread.run_sync(
        wait_for, lambda: rpc("store_stat")["counters"]["lanes_running"] == 1, 60,
        "the node's lane ready")
    data = os.urandom(3 * MIB + 5)
    root, built = build_bytes(data)
    async with provider_behind_nat(devnet, 0, {b.cid: b.data for b in built}, root) \
            as (peer, asked):
        output = short_dir / "out"
        result = await trio.to_thread.run_sync(
            rpc, "store_get", {"cid": str(root), "output": str(output)})
        assert set(asked) == {devnet.nodes[0].peer_id}  # every want came in-process
    assert output.read_bytes() == data
    assert result["blocks_fetched"] == result["blocks_total"] == len(built)
    assert list(result["bytes_by_peer"]) == [peer]
    counters = (await trio.to_thread.run_sync(rpc, "store_stat"))["counters"]
    assert counters["lane_blocks_staged"] == 0 and counters["lanes_died"] == 0
