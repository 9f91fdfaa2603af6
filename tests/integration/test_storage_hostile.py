"""A provider that answers want-lists with wrong bytes is scored down and dropped from the
fetch, and the fetch completes from the honest provider.

The liar is a real libp2p host in this test process, built by the node's own host builder
and speaking the node's own wire layer: it announces itself to the fetching node as a
provider of the root (a DHT ADD_PROVIDER request, as any peer may) and then serves
blocks whose bytes do not match their CIDs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from multiaddr import Multiaddr

from dht.messages import MessageKind, Request, encode_message
from dht.peer import PeerInfo
from prsm_node.devnet import Devnet
from prsm_node.dht_service import DHT_PROTOCOL
from prsm_node.net.wire import Wire
from prsm_node.storage_fetch import BLOCKS_PROTOCOL
from storage.cid import Cid
from storage.exchange_messages import BlockReply, WantBlocks, decode_message
from storage.exchange_messages import encode_message as encode_block_message
from tests.net.hosts import wired_host

from .conftest import TEST_NETWORK
from .test_storage_exchange import MIB, storage_devnet

pytestmark = pytest.mark.multiprocess


@contextlib.asynccontextmanager
async def liar_connected_to(devnet: Devnet, index: int) -> AsyncIterator[tuple[Wire, Any, list]]:
    """(wire, host, want-lists received) of a host that serves wrong bytes for any block."""
    wants: list[WantBlocks] = []

    async def serve_wrong_bytes(peer: str, payload: Any) -> list[bytes]:
        want = decode_message(payload)
        assert isinstance(want, WantBlocks)
        wants.append(want)
        return [
            encode_block_message(BlockReply(request_id=want.request_id, cid=cid, data=b"lies"))
            for cid in want.cids
        ]

    async with wired_host(TEST_NETWORK, frame_size_max=4 * MIB) as (host, wire):
        wire.register(BLOCKS_PROTOCOL, serve_wrong_bytes)
        await host.connect(info_from_p2p_addr(Multiaddr(devnet.nodes[index].address)))
        yield wire, host, wants


async def announce_as_provider(wire: Wire, host: Any, devnet: Devnet, index: int, cid: str):
    own = PeerInfo(
        peer_id=host.get_id().to_bytes(),
        addrs=tuple(f"{address}/p2p/{host.get_id()}" for address in host.get_addrs()),
    )
    request = Request(
        request_id=1, kind=MessageKind.ADD_PROVIDER, key=Cid.parse(cid).to_bytes(), provider=own
    )
    await wire.request(devnet.nodes[index].peer_id, DHT_PROTOCOL, encode_message(request))


async def test_a_peer_serving_wrong_blocks_is_dropped_and_the_fetch_completes(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = await trio.to_thread.run_sync(lambda: storage_devnet(make_devnet, 2))
    source = short_dir / "model.bin"
    source.write_bytes(os.urandom(6 * MIB))

    def rpc(index: int, method: str, params: dict[str, Any] | None = None) -> Any:
        with devnet.client(index, timeout_s=60) as client:
            return client.call(method, params)

    cid = (await trio.to_thread.run_sync(rpc, 0, "store_add", {"path": str(source)}))["cid"]
    async with liar_connected_to(devnet, 1) as (wire, host, wants):
        await announce_as_provider(wire, host, devnet, 1, cid)
        liar = host.get_id().to_base58()
        output = short_dir / "out"
        result = await trio.to_thread.run_sync(
            rpc, 1, "store_get", {"cid": cid, "output": str(output)}
        )
        assert wants, "the liar was never asked for a block"
    assert output.read_bytes() == source.read_bytes()
    assert result["peers_dropped"] == 1
    assert set(result["bytes_by_peer"]) == {liar, devnet.nodes[0].peer_id}
    assert result["blocks_fetched"] == result["blocks_total"] == 7
    statistics = await trio.to_thread.run_sync(rpc, 1, "node_statistics")
    assert statistics["scores"]["rejected_total"] >= 1
    assert (await trio.to_thread.run_sync(rpc, 1, "store_stat"))["counters"]["peers_blamed"] == 1
