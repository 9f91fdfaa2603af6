"""Start-up order seen from outside: a node listens only once it serves its protocols, and
a node that cannot listen stops with an error instead of running unreachable.

The early peer is a real libp2p host in this test process, built by the node's own host
builder and speaking the node's own wire layer. It dials the node's port over and over
while the node starts, and the moment a connection is up it sends a DHT request, as a
bootstrapping peer does. Before the fix the host listened before the services had
registered their protocols: a peer this early got "protocol not supported", and the node
never put it in its routing table (a CI failure: "node0 knowing the other nodes in its DHT
table" timed out after 90 s).
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID

from dht.keys import key_to_bytes
from dht.messages import MessageKind, Request, Response, decode_frame, encode_message
from prsm_node.devnet import Devnet
from prsm_node.dht_service import DHT_PROTOCOL
from prsm_node.net.host import dial
from prsm_node.net.ping import PING_PROTOCOL
from tests.net.hosts import wired_host

from .conftest import TEST_NETWORK

pytestmark = pytest.mark.multiprocess

DIAL_EVERY_S = 0.005
START_DEADLINE_S = 60


async def test_the_first_peer_to_connect_finds_its_protocols_served(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(1, start=False)
    node = devnet.nodes[0]
    async with wired_host(TEST_NETWORK) as (host, wire):
        devnet.start(0)
        with trio.fail_after(START_DEADLINE_S):
            while True:  # the first moment the node accepts a connection
                try:
                    await dial(host, node.address)
                    break
                except Exception:  # refused: not listening yet
                    await trio.sleep(DIAL_EVERY_S)
            request = Request(request_id=7, kind=MessageKind.FIND_NODE,
                              key=key_to_bytes(int.from_bytes(b"\x01" * 32, "big")))
            answer = await wire.request(node.peer_id, DHT_PROTOCOL, encode_message(request))
            # The peer manager's own protocols too (registered in `run` they came last).
            pong = await wire.request(node.peer_id, PING_PROTOCOL, {"nonce": 11})
        assert pong == {"nonce": 11}
        response = decode_frame(ID.from_base58(node.peer_id).to_bytes(), answer)
        assert isinstance(response, Response) and response.request_id == 7
        table = await trio.to_thread.run_sync(devnet.call, 0, "dht_table")
        assert table["peers_total"] == 1  # the early peer is in the node's routing table


def test_a_node_whose_listen_address_is_taken_stops_and_says_which(short_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"/ip4/127.0.0.1/tcp/{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "prsm_node", "run", "--data-dir", str(short_dir / "node"),
             "--listen", address],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"cannot listen on {address} (network.listen)" in result.stderr
    assert "in use" in result.stderr
    assert not (short_dir / "node" / "node.sock").exists()  # it cleaned up after itself
