"""A 100 MB file between real node processes (issue 5, "How it is shown"):

1. added on node0 and fetched on node1, which finds node0 through a DHT provider lookup;
2. the same root fetched on node2 from three providers at once: node0 (honest), node1
   (honest, SIGKILLed mid-transfer) and a liar (a libp2p host in this test process that
   answers every want with wrong bytes, see test_storage_hostile.py);
and each time the output file is byte-identical (sha256 of the files, both streamed).

Uploads are paced at 32 MiB/s per peer so that the kill lands while node1 is still
serving; the test checks afterwards that it did.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from prsm_node.config import load_config
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, wait_for

from .test_storage_exchange import MIB, storage_devnet
from .test_storage_hostile import announce_as_provider, liar_connected_to

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

SIZE = 100 * 10**6
BLOCKS = -(-SIZE // MIB) + 1  # 96 raw leaves under one dag-pb root
PACE = 32 * MIB
KILL_AFTER = 4 * MIB


def write_deterministic(path: Path, size: int, seed: int) -> str:
    """Write `size` seeded pseudo-random bytes, one MiB at a time; their sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as stream:
        for offset in range(0, size, MIB):
            chunk = rng.randbytes(min(MIB, size - offset))
            digest.update(chunk)
            stream.write(chunk)
    return digest.hexdigest()


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def test_100_mb_through_the_dht_then_from_three_providers_one_killed_one_lying(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = await trio.to_thread.run_sync(
        lambda: storage_devnet(make_devnet, 3, upload_peer_bytes_per_s=PACE, upload_burst_bytes=MIB,
                               fetch_lanes=2)
    )
    peer = [node.peer_id for node in devnet.nodes]

    def rpc(index: int, method: str, params: dict[str, Any] | None = None) -> Any:
        with devnet.client(index, timeout_s=120) as client:
            return client.call(method, params)

    async def call(index: int, method: str, params: dict[str, Any] | None = None) -> Any:
        return await trio.to_thread.run_sync(rpc, index, method, params)

    source = short_dir / "model.bin"
    expected = await trio.to_thread.run_sync(write_deterministic, source, SIZE, 5)
    added = await call(0, "store_add", {"path": str(source)})
    cid = added["cid"]
    assert added["size"] == SIZE and added["blocks"] == BLOCKS

    # 1. One provider, found through the DHT.
    first_out = short_dir / "first.bin"
    first = await call(1, "store_get", {"cid": cid, "output": str(first_out)})
    assert await trio.to_thread.run_sync(sha256_of, first_out) == expected
    assert first["blocks_fetched"] == first["blocks_total"] == BLOCKS
    assert list(first["bytes_by_peer"]) == [peer[0]]
    first_out.unlink()

    # 2. Three providers at once: node0, node1 (killed midway) and the liar.
    def node2_sees_both_honest_providers() -> bool:
        found = rpc(2, "dht_providers", {"cid": cid})["providers"]
        return {p["peer_id"] for p in found} >= {peer[0], peer[1]}

    await trio.to_thread.run_sync(
        wait_for, node2_sees_both_honest_providers, 30, "provider records of node0 and node1"
    )
    await trio.to_thread.run_sync(
        wait_for, lambda: rpc(2, "store_stat")["counters"]["lanes_running"] == 2, 60,
        "node2's two lanes ready")
    in_flight_max = load_config(DataDir(devnet.nodes[2].data_dir).config_file).storage
    in_flight_max = in_flight_max.in_flight_per_peer_max
    output = short_dir / "out.bin"
    outcome: dict[str, Any] = {}
    async with liar_connected_to(devnet, 2) as (wire, host, wants):
        await announce_as_provider(wire, host, devnet, 2, cid)
        liar = host.get_id().to_base58()

        async def fetch() -> None:
            outcome.update(await call(2, "store_get", {"cid": cid, "output": str(output)}))

        def victim_has_served() -> bool:
            fetches = rpc(2, "store_stat")["fetches"]
            return bool(fetches) and fetches[0]["bytes_by_peer"].get(peer[1], 0) >= KILL_AFTER

        victim_lanes = [child for child in psutil.Process(devnet.pid(1)).children()
                        if "prsm_node.storage_lane" in child.cmdline()]
        assert len(victim_lanes) == 2, victim_lanes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.to_thread.run_sync(
                wait_for, victim_has_served, 60, "node2 fetching blocks from node1"
            )
            await trio.to_thread.run_sync(devnet.kill, 1)
        # A SIGKILLed node's lanes see their stdin end and exit: no orphan processes.
        await trio.to_thread.run_sync(
            wait_for, lambda: not any(map(alive, victim_lanes)), 30,
            "node1's lanes exiting after node1 was killed")
        assert wants, "the liar was never asked for a block"
        assert len(wants) <= in_flight_max, "the liar was asked again after it lied"

    assert await trio.to_thread.run_sync(sha256_of, output) == expected
    assert outcome["blocks_fetched"] == outcome["blocks_total"] == BLOCKS
    by_peer = outcome["bytes_by_peer"]
    assert set(by_peer) == {peer[0], peer[1], liar}, by_peer
    assert KILL_AFTER <= by_peer[peer[1]] < SIZE - 8 * MIB, by_peer  # killed mid-transfer
    assert by_peer[peer[0]] >= 8 * MIB, by_peer  # node0 served the rest
    assert by_peer[liar] < 1024, by_peer  # b"lies" per block: a handful of frames
    assert outcome["peers_dropped"] >= 1
    statistics = await call(2, "node_statistics")
    assert statistics["scores"]["rejected_total"] >= 1
    assert statistics["scores"]["peers_penalised"] >= 1
    counters = (await call(2, "store_stat"))["counters"]
    assert counters["peers_blamed"] >= 1
    assert counters["lanes_started"] == 2 and counters["lanes_died"] == 0, counters
    assert counters["lane_blocks_staged"] >= BLOCKS // 2, counters  # most came through lanes
    leftovers = list((Path(devnet.nodes[2].data_dir) / "blocks" / "tmp").iterdir())
    assert not leftovers, leftovers  # every lane file adopted or removed
