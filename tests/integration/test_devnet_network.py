"""Three nodes from the devnet launcher find each other, survive a SIGKILL and stop cleanly."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from prsm_node.control import RpcCallError
from prsm_node.devnet import Devnet, load_devnet, wait_for

from .conftest import TEST_NETWORK, run_cli

pytestmark = pytest.mark.multiprocess


def connected_peer_ids(devnet: Devnet, index: int) -> set[str]:
    return {peer["peer_id"] for peer in devnet.call(index, "peers_list")["peers"]}


def test_later_nodes_learn_each_other_through_the_first(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(3)
    devnet.wait_meshed(30)
    peers = devnet.call(1, "peers_list")["peers"]
    by_id = {peer["peer_id"]: peer for peer in peers}
    first = by_id[devnet.nodes[0].peer_id]
    assert first["direction"] == "outbound"  # node1 dialled its bootstrap peer
    assert first["addrs"] == [devnet.nodes[0].address]
    wait_for(
        lambda: all(p["latency_ms"] for p in devnet.call(1, "peers_list")["peers"]),
        30,
        "ping latency for every peer",
    )


def test_killed_first_node_rejoins_after_restart(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(3)
    devnet.wait_meshed(30)
    first = devnet.nodes[0]
    devnet.kill(0)
    for index in (1, 2):
        wait_for(
            lambda index=index: first.peer_id not in connected_peer_ids(devnet, index),
            30,
            f"node{index} noticing that node0 is gone",
        )
    assert first.socket_path.exists()  # SIGKILL left its socket and lock behind
    devnet.start(0)
    devnet.wait_ready(0)
    devnet.wait_meshed(30)


def test_sigterm_stops_cleanly_and_removes_socket_and_lock(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(2)
    devnet.wait_meshed(30)
    node = devnet.nodes[1]
    devnet.signal(1, signal.SIGTERM)
    assert devnet.wait_exit(1) == 0
    assert not node.socket_path.exists()
    assert not (node.data_dir / "node.lock").exists()
    known = (node.data_dir / "peers.json").read_text()
    assert devnet.nodes[0].peer_id in known
    wait_for(lambda: not connected_peer_ids(devnet, 0), 30, "node0 noticing node1 has stopped")


def test_sigint_stops_cleanly(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(1)
    devnet.signal(0, signal.SIGINT)
    assert devnet.wait_exit(0) == 0
    assert not devnet.nodes[0].socket_path.exists()


def test_ping_round_trip_over_the_framed_layer(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(2)
    devnet.wait_meshed(30)
    other = devnet.nodes[1].peer_id
    results = [devnet.call(0, "peers_ping", {"peer_id": other}) for _ in range(20)]
    assert all(result["peer_id"] == other and result["rtt_ms"] > 0 for result in results)
    stats = devnet.call(0, "node_statistics")
    # One long-lived stream per protocol (ping, peer exchange, registry sync, PBFT between
    # the two validators), not one per request: 20 pings went over one stream.
    assert 1 <= stats["wire"]["streams_opened"] <= 5
    assert stats["scores"]["rejected_total"] == 0
    # The loop monitor's heartbeat runs in a node (threshold from the default config).
    assert stats["event_loop"]["threshold_ms"] == 250
    assert stats["event_loop"]["heartbeats"] > 0


def test_ping_to_a_peer_we_are_not_connected_to_is_a_clear_error(
    make_devnet: Callable[..., Devnet],
):
    devnet = make_devnet(1)
    with devnet.client(0) as client, pytest.raises(RpcCallError, match="not connected"):
        client.call("peers_ping", {"peer_id": "12D3KooWNobody"})


def test_bootstrap_peer_that_starts_late_is_reached_by_retrying(
    make_devnet: Callable[..., Devnet],
):
    devnet = make_devnet(2, start=False)
    devnet.start(1)
    devnet.wait_ready(1)
    assert connected_peer_ids(devnet, 1) == set()
    devnet.start(0)
    devnet.wait_ready(0)
    devnet.wait_meshed(30)


def test_inbound_connections_past_the_limit_are_refused(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(3, replace(TEST_NETWORK, peers_max=1), start=False)
    for index in range(3):
        devnet.start(index)
        devnet.wait_ready(index)
    wait_for(lambda: connected_peer_ids(devnet, 0), 30, "node0 taking its one connection")
    (first,) = connected_peer_ids(devnet, 0)
    late = 2 if first == devnet.nodes[1].peer_id else 1
    wait_for(
        lambda: devnet.call(late, "node_statistics")["dials_failed"] >= 2,
        30,
        "the late node's dials to the full node0 failing",
    )
    assert connected_peer_ids(devnet, 0) == {first}
    assert connected_peer_ids(devnet, late) == set()


def test_logs_are_json_events_and_never_hold_the_key(make_devnet: Callable[..., Devnet]):
    devnet = make_devnet(2)
    devnet.wait_meshed(30)
    node = devnet.nodes[1]
    assert devnet.stop(1) == 0
    lines = (node.data_dir / "logs" / "node.log").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert {"node.started", "peers.connected", "node.stopped"} <= set(events)
    seed = (node.data_dir / "node.key").read_bytes()
    logged = (node.data_dir / "logs" / "node.log").read_bytes()
    logged += (node.data_dir / "logs" / "process.log").read_bytes()
    for form in (seed, seed.hex().encode(), base64.b64encode(seed)):
        assert form not in logged


def test_devnet_commands_start_and_stop_every_node(short_dir: Path) -> None:
    directory = short_dir / "net"
    init = run_cli("devnet", "init", "--nodes", "3", "--dir", str(directory))
    assert init.returncode == 0, init.stderr
    nodes = load_devnet(directory)
    assert [node.name for node in nodes] == ["node0", "node1", "node2"]
    command = [sys.executable, "-m", "prsm_node", "devnet", "up", "--dir", str(directory)]
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:  # bounded: the launcher prints one line per node, then this
            lines.append(line)
            if "nodes running" in line:
                break
        printed = "".join(lines)
        assert all(node.peer_id in printed and str(node.socket_path) in printed for node in nodes)
        devnet = Devnet(nodes)
        wait_for(lambda: len(devnet.call(2, "peers_list")["peers"]) == 2, 30, "node2 meeting both")
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert not any(node.socket_path.exists() for node in nodes)
