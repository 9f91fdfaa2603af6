"""A real 20-process network from the devnet launcher: the DHT fills the routing tables
(peer exchange off), put/get from every node, provide/find-providers, find-peer, and a node
killed with SIGKILL mid-run without breaking lookups."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from prsm_node.config import NetworkConfig, load_config, render_toml
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, wait_for

from .conftest import TEST_NETWORK, run_cli

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

NODES = 20
KILLED = 7
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def call(devnet: Devnet, index: int, method: str, params: dict[str, Any] | None = None) -> Any:
    """A control call that may take long: 20 nodes with their DHT, registry gossip and
    ledger busy two cores, and a lookup's replies wait in line behind that work."""
    with devnet.client(index, timeout_s=90) as client:
        return client.call(method, params)


def table_size(devnet: Devnet, index: int) -> int:
    return call(devnet, index, "dht_table")["peers_total"]


def test_twenty_node_dht(make_devnet: Callable[..., Devnet]) -> None:
    # Pings at the default 5 s: TEST_NETWORK's 0.5 s is 19 x 2 pings a second per node,
    # ~1,500 requests/s across 20 nodes, which alone saturates two cores.
    devnet = make_devnet(NODES, replace(TEST_NETWORK, peer_exchange=False,
                                        ping_interval_ms=NetworkConfig().ping_interval_ms))
    # Everyone bootstraps from node0 alone; the self-lookups must spread the rest.
    for index in range(NODES):
        wait_for(
            lambda index=index: table_size(devnet, index) >= 5,
            180,  # generous: 20 nodes start on 2 cores (a deadline, not a wait)
            f"node{index} learning at least 5 peers through the DHT",
        )
    keys = {}
    for index in range(NODES):
        result = call(devnet, index, "dht_put", {"key": "name", "value": f'{{"node": {index}}}'})
        assert result["peers_sent"] >= 1, (index, result)
        keys[index] = result["key"]
    for reader in range(0, NODES, 3):
        for writer in range(NODES):
            got = call(devnet, reader, "dht_get", {"key": keys[writer]})
            assert got["found"] and got["value"] == {"node": writer}, (reader, writer, got)
    call(devnet, 5, "dht_provide", {"cid": CID})
    provider = devnet.nodes[5].peer_id
    for index in range(NODES):
        found = call(devnet, index, "dht_providers", {"cid": CID})["providers"]
        assert provider in [peer["peer_id"] for peer in found], index

    devnet.kill(KILLED)
    alive = [index for index in range(NODES) if index != KILLED]
    for index in alive:
        target = devnet.nodes[(index + 3) % NODES]
        if target.name == devnet.nodes[KILLED].name:
            continue
        result = call(devnet, index, "dht_find_peer", {"peer_id": target.peer_id})
        assert result["found"] and result["addrs"] == [target.address], (index, result)
        got = call(devnet, index, "dht_get", {"key": keys[(index + 11) % NODES]})
        assert got["found"], (index, got)
        assert got["completed"]

    cli = run_cli("dht", "get", keys[KILLED], "--data-dir", str(devnet.nodes[0].data_dir), "--json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["value"] == {"node": KILLED}  # replicated before the kill
    cli = run_cli("dht", "table", "--data-dir", str(devnet.nodes[3].data_dir))
    assert cli.returncode == 0 and "BUCKET" in cli.stdout


def test_routing_table_is_persisted_and_reloaded_at_start(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(4)
    wait_for(lambda: table_size(devnet, 3) >= 3, 60, "node3 knowing the other three")
    before = {peer["peer_id"] for peer in call(devnet, 3, "dht_table")["peers"]}
    assert devnet.stop(3) == 0
    data_dir = DataDir(devnet.nodes[3].data_dir)
    assert (data_dir.root / "dht_table.msgpack").exists()
    # Cut every other way back in: no bootstrap peer, no peers.json, nobody else running.
    for index in range(3):
        devnet.stop(index)
    config = load_config(data_dir.config_file)
    isolated = replace(config, network=replace(config.network, bootstrap=()))
    data_dir.config_file.write_text(render_toml(isolated))
    data_dir.peers_file.unlink()
    devnet.start(3)
    devnet.wait_ready(3)
    assert call(devnet, 3, "peers_list")["peers"] == []
    after = {peer["peer_id"] for peer in call(devnet, 3, "dht_table")["peers"]}
    assert before == after
