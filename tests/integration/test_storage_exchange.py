"""Block exchange between real node processes on 127.0.0.1: add on one node, get on
another through DHT provider records, pull from two providers at once, resume a partially
present DAG, and finish a fetch whose provider is killed midway."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from prsm_node.config import load_config, render_toml
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, wait_for
from storage.car import CarWriter
from storage.unixfs import build_bytes

from .conftest import run_cli

pytestmark = pytest.mark.multiprocess

MIB = 1024 * 1024


def storage_devnet(make_devnet: Callable[..., Devnet], nodes: int, **storage: Any) -> Devnet:
    """A devnet whose nodes get `storage` settings (no fsync: throwaway test dirs); each
    node is started and has the others in its DHT table before this returns."""
    devnet = make_devnet(nodes, start=False)
    for node in devnet.nodes:
        path = DataDir(node.data_dir).config_file
        config = load_config(path)
        path.write_text(
            render_toml(replace(config, storage=replace(config.storage, fsync=False, **storage)))
        )
    devnet.start_all()
    for index in range(nodes):
        devnet.wait_ready(index)
    for index in range(nodes):
        wait_for(
            lambda index=index: devnet.call(index, "dht_table")["peers_total"] >= nodes - 1,
            90,
            f"node{index} knowing the other nodes in its DHT table",
        )
    return devnet


def call(devnet: Devnet, index: int, method: str, params: dict[str, Any] | None = None) -> Any:
    with devnet.client(index, timeout_s=120) as client:
        return client.call(method, params)


def random_file(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def test_add_on_one_node_then_get_from_one_and_from_two_providers(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    # Uploads are paced (4 MiB/s per peer) so that no provider can serve the whole file
    # before the other's first answers arrive: the split between them is then not a race.
    devnet = storage_devnet(make_devnet, 3, upload_peer_bytes_per_s=4 * MIB, upload_burst_bytes=MIB)
    source = random_file(short_dir, "model.bin", 12 * MIB + 123)
    added = run_cli(
        "store", "add", str(source), "--data-dir", str(devnet.nodes[0].data_dir), "--json"
    )
    assert added.returncode == 0, added.stderr
    root = json.loads(added.stdout)
    assert root["size"] == source.stat().st_size and root["cid"].startswith("bafybei")

    first = call(devnet, 1, "store_get", {"cid": root["cid"], "output": str(short_dir / "b")})
    assert (short_dir / "b").read_bytes() == source.read_bytes()
    assert first["blocks_fetched"] == first["blocks_total"] == 14  # 13 leaves + the root
    assert list(first["bytes_by_peer"]) == [devnet.nodes[0].peer_id]

    both = call(devnet, 2, "store_get", {"cid": root["cid"], "output": str(short_dir / "c")})
    assert (short_dir / "c").read_bytes() == source.read_bytes()
    by_peer = both["bytes_by_peer"]
    assert set(by_peer) == {devnet.nodes[0].peer_id, devnet.nodes[1].peer_id}, by_peer
    assert all(size >= MIB for size in by_peer.values()), by_peer  # blocks from each
    served = [call(devnet, i, "store_stat")["counters"]["blocks_served"] for i in (0, 1)]
    assert served[0] >= 1 and served[1] >= 1, served
    providers = call(devnet, 0, "dht_providers", {"cid": root["cid"]})["providers"]
    assert {p["peer_id"] for p in providers} >= {devnet.nodes[1].peer_id, devnet.nodes[2].peer_id}


@pytest.mark.parametrize("lanes", [0, 1], ids=["in-process", "one-lane"])
def test_fetch_of_a_partially_present_dag_fetches_only_the_missing_blocks(
    make_devnet: Callable[..., Devnet], short_dir: Path, lanes: int
) -> None:
    devnet = storage_devnet(make_devnet, 2, fetch_lanes=lanes)
    data = os.urandom(10 * MIB)
    root, blocks = build_bytes(data)
    source = short_dir / "full.bin"
    source.write_bytes(data)
    partial = short_dir / "partial.car"
    with open(partial, "wb") as stream:  # an interrupted earlier fetch left these behind
        writer = CarWriter(stream, [root])
        for block in blocks[:4]:
            writer.put(block)
    imported = call(devnet, 1, "store_import_car", {"path": str(partial)})
    assert imported["blocks"] == 4 and imported["pinned"] == []  # incomplete: not pinned
    assert call(devnet, 0, "store_add", {"path": str(source)})["cid"] == str(root)
    wait_for(lambda: call(devnet, 1, "store_stat")["counters"].get("lanes_running", 0) == lanes,
             60, "node1's lanes ready")

    result = call(devnet, 1, "store_get", {"cid": str(root), "output": str(short_dir / "out")})
    assert (short_dir / "out").read_bytes() == data
    assert result["blocks_total"] == len(blocks) == 11
    assert result["blocks_local"] == 4
    assert result["blocks_fetched"] == len(blocks) - 4
    counters = call(devnet, 1, "store_stat")["counters"]
    assert counters.get("lanes_started", 0) == lanes
    assert counters.get("lane_blocks_staged", 0) == (len(blocks) - 4 if lanes else 0)
    assert list((devnet.nodes[1].data_dir / "blocks" / "tmp").iterdir()) == []


def test_fetch_completes_when_a_provider_is_killed_midway(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    # Uploads are paced at 3 MiB/s per peer so that the fetch is still running at the kill.
    devnet = storage_devnet(make_devnet, 3, upload_peer_bytes_per_s=3 * MIB, upload_burst_bytes=MIB)
    source = random_file(short_dir, "model.bin", 12 * MIB)
    cid = call(devnet, 0, "store_add", {"path": str(source)})["cid"]
    car = short_dir / "model.car"
    call(devnet, 0, "store_export_car", {"cid": cid, "path": str(car)})
    assert call(devnet, 1, "store_import_car", {"path": str(car)})["pinned"] == [cid]

    outcome: dict[str, Any] = {}
    fetch = threading.Thread(
        target=lambda: outcome.update(
            call(devnet, 2, "store_get", {"cid": cid, "output": str(short_dir / "out")})
        )
    )
    fetch.start()
    victim = devnet.nodes[1].peer_id

    def victim_has_served() -> bool:
        fetches = call(devnet, 2, "store_stat")["fetches"]
        return bool(fetches) and fetches[0]["bytes_by_peer"].get(victim, 0) >= MIB

    wait_for(victim_has_served, 30, "node2 fetching blocks from node1")
    devnet.kill(1)
    fetch.join(60)
    assert not fetch.is_alive()
    assert (short_dir / "out").read_bytes() == source.read_bytes()
    assert outcome["blocks_fetched"] == outcome["blocks_total"] == 13
    assert outcome["bytes_by_peer"][devnet.nodes[0].peer_id] >= MIB
