"""The gossiped registry on real node processes (devnet launcher, 127.0.0.1): announcements
and offers reach every node, the CLI shows them, a stopped node expires from the view, and
a late joiner and a restarted node catch up through /prsm/registry-sync/1.0.0."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from prsm_node.devnet import DEVNET_REGISTRY, Devnet, wait_for
from prsm_node.registry.capabilities import PROBE_SCRIPT

from .conftest import run_cli

pytestmark = pytest.mark.multiprocess

CID_A = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
CID_B = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"
DEADLINE_S = 60
GOSSIP_HISTORY_HEARTBEATS = 5
"""py-libp2p's GossipSub keeps a message for 5 heartbeats (gossip_history) and replays that
window to a peer that subscribes; past it, only sync can bring the message."""

FAST = replace(DEVNET_REGISTRY, announce_interval_ms=1000, capability_ttl_ms=5000)
QUIET = replace(DEVNET_REGISTRY, announce_interval_ms=600_000, capability_ttl_ms=1_200_000)


def stats(devnet: Devnet, index: int) -> dict[str, Any]:
    return devnet.call(index, "registry_statistics")


def model_names(devnet: Devnet, index: int) -> set[str]:
    return {model["name"] for model in devnet.call(index, "registry_models")["models"]}


def node_ids(devnet: Devnet, index: int) -> set[str]:
    return {node["peer_id"] for node in devnet.call(index, "registry_nodes")["nodes"]}


def cli_json(devnet: Devnet, index: int, *args: str) -> Any:
    done = run_cli(*args, "--data-dir", str(devnet.nodes[index].data_dir), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_everywhere(
    devnet: Devnet,
    indexes: list[int],
    probe: Callable[[int], Any],
    what: str,
    deadline_s: float = DEADLINE_S,
) -> None:
    for index in indexes:
        wait_for(lambda index=index: probe(index), deadline_s, f"node{index}: {what}")


def wait_gossip_forgotten(devnet: Devnet, indexes: list[int]) -> None:
    """Poll until every node's GossipSub has shifted its message cache past what was
    published so far: from then on a newcomer gets those messages only through sync."""
    marks = {index: stats(devnet, index)["gossip"]["heartbeats"] for index in indexes}
    wait_everywhere(
        devnet,
        indexes,
        lambda index: stats(devnet, index)["gossip"]["heartbeats"]
        > marks[index] + GOSSIP_HISTORY_HEARTBEATS,
        "message cache shifted past the announcements",
    )


def test_announcements_and_offers_reach_every_node_and_the_cli_shows_them(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(4, validators=1, registry=FAST)
    everyone = {node.peer_id for node in devnet.nodes}
    wait_everywhere(devnet, [0, 1, 2, 3], lambda i: node_ids(devnet, i) == everyone,
                    "capabilities of all four nodes")

    announced = cli_json(devnet, 1, "models", "announce", "gpt-mini", CID_A, "--arch",
                         "transformer", "--tag", "llm", "--tag", "small", "--size", "1234")
    assert announced["peer_id"] == devnet.nodes[1].peer_id
    wait_everywhere(devnet, [0, 2, 3], lambda i: "gpt-mini" in model_names(devnet, i),
                    "the model announcement")
    listed = cli_json(devnet, 3, "models", "list", "--tag", "llm")
    assert [model["manifest_cid"] for model in listed["models"]] == [CID_A]
    assert listed["models"][0]["signer"] == announced["signer"]
    assert listed["models"][0]["source"] == "gossip"
    shown = cli_json(devnet, 2, "models", "show", "gpt-mini")
    assert [holder["peer_id"] for holder in shown["holders"]] == [devnet.nodes[1].peer_id]

    nodes = cli_json(devnet, 0, "nodes")["nodes"]
    assert {node["peer_id"] for node in nodes} == everyone
    assert all(node["cpu_cores"] >= 1 and node["gpus"] == [] for node in nodes)
    assert cli_json(devnet, 0, "nodes", "--gpu") == {"nodes": []}
    holding = cli_json(devnet, 0, "nodes", "--model", "gpt-mini")["nodes"]
    assert [node["peer_id"] for node in holding] == [devnet.nodes[1].peer_id]

    offer = {"offer_id": "job-1", "job_kind": "inference", "model_cid": CID_A, "price": "2.5"}
    devnet.call(2, "registry_offer_job", offer)
    wait_everywhere(devnet, [0, 1, 3], lambda i: devnet.call(i, "registry_offers")["offers"],
                    "the job offer")
    offers = cli_json(devnet, 0, "offers")["offers"]
    assert [(o["key"], o["price"], o["peer_id"]) for o in offers] == [
        ("job-1", "2.5", devnet.nodes[2].peer_id)
    ]
    table = run_cli("nodes", "--data-dir", str(devnet.nodes[0].data_dir))
    assert table.returncode == 0 and devnet.nodes[3].peer_id in table.stdout

    assert devnet.stop(3) == 0  # a node that stops announcing leaves everyone's view
    wait_everywhere(devnet, [0, 1, 2], lambda i: devnet.nodes[3].peer_id not in node_ids(devnet, i),
                    "node3's capabilities expired")
    assert "gpt-mini" in model_names(devnet, 0)


def test_bad_publish_params_are_refused_with_the_reason(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(1, validators=1, registry=replace(DEVNET_REGISTRY,
                                                           entries_per_signer_max=3))
    for cid in (CID_A, CID_B):  # with our capability entry, the node holds 3 of its own
        devnet.call(0, "registry_announce_model",
                    {"name": "m", "architecture": "x", "manifest_cid": cid})
    third = "bafkreiaaxcehkvezcjvxhnpwwocx5jmwnsbmukrdxxbgodbtxrttmx7wbq"
    over = run_cli("models", "announce", "m", third, "--data-dir", str(devnet.nodes[0].data_dir))
    assert over.returncode == 1 and "entries_per_signer_max" in over.stderr, over.stderr
    bad = run_cli("models", "announce", "x", "QmNotACid", "--data-dir",
                  str(devnet.nodes[0].data_dir))
    assert bad.returncode == 1 and "manifest_cid" in bad.stderr
    bad = run_cli("rpc", "registry_offer_job", json.dumps(
        {"offer_id": "o", "job_kind": "k", "model_cid": CID_A, "price": "-1"}
    ), "--data-dir", str(devnet.nodes[0].data_dir))
    assert bad.returncode == 1 and "price" in bad.stdout
    missing = run_cli("models", "show", "nothing", "--data-dir", str(devnet.nodes[0].data_dir))
    assert missing.returncode == 1 and "no model" in missing.stderr


def test_a_late_joiner_and_a_restarted_node_catch_up_through_sync(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(4, validators=1, registry=QUIET, start=False)
    for index in range(3):
        devnet.start(index)
    for index in range(3):
        devnet.wait_ready(index)
    first_three = {node.peer_id for node in devnet.nodes[:3]}
    wait_everywhere(devnet, [0, 1, 2], lambda i: node_ids(devnet, i) == first_three,
                    "the first three capabilities")
    devnet.call(0, "registry_announce_model",
                {"name": "early", "architecture": "cnn", "manifest_cid": CID_A})
    wait_everywhere(devnet, [1, 2], lambda i: "early" in model_names(devnet, i), "early model")
    wait_gossip_forgotten(devnet, [0, 1, 2])

    devnet.start(3)  # the late joiner: nothing it needs is in anyone's gossip cache now
    devnet.wait_ready(3)
    wait_for(lambda: "early" in model_names(devnet, 3), DEADLINE_S, "node3 pulling the model")
    wait_for(lambda: first_three < node_ids(devnet, 3), DEADLINE_S, "node3 pulling capabilities")
    late = stats(devnet, 3)["counters"]
    assert late.get("sync_new", 0) >= 4, late  # 3 capabilities + the model, all by sync

    assert devnet.stop(2) == 0
    devnet.call(0, "registry_announce_model",
                {"name": "while-away", "architecture": "cnn", "manifest_cid": CID_B})
    devnet.call(1, "registry_offer_job",
                {"offer_id": "job-7", "job_kind": "inference", "model_cid": CID_B, "price": "1"})
    wait_everywhere(devnet, [1, 3], lambda i: "while-away" in model_names(devnet, i),
                    "the second model")
    wait_gossip_forgotten(devnet, [0, 1, 3])

    devnet.start(2)
    devnet.wait_ready(2)
    wait_for(lambda: "while-away" in model_names(devnet, 2), DEADLINE_S, "node2 catching up")
    wait_for(lambda: devnet.call(2, "registry_offers")["offers"], DEADLINE_S, "node2's offer")
    restarted = stats(devnet, 2)
    assert restarted["loaded_at_start"] >= 5, restarted  # its own view survived the restart
    assert restarted["counters"].get("sync_new", 0) >= 2, restarted
    assert model_names(devnet, 2) == {"early", "while-away"}


def test_a_node_announces_the_gpus_torch_sees(make_devnet: Callable[..., Devnet]) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT], capture_output=True, check=True, timeout=120
    )
    expected = json.loads(probe.stdout)
    devnet = make_devnet(1, validators=1, registry=replace(FAST, gpu_probe=True))
    wait_for(lambda: stats(devnet, 0)["hardware"]["probed"], DEADLINE_S, "the GPU probe")

    def announced() -> dict[str, Any] | None:
        nodes = devnet.call(0, "registry_nodes")["nodes"]
        fresh = [node for node in nodes if node["gpus"] == expected["gpus"]]
        return fresh[0] if fresh else None

    node = wait_for(announced, DEADLINE_S, "a capability announcement with the probed GPUs")
    assert node["job_kinds"] == (["inference", "distill"] if expected["torch"] else [])
    gpu_nodes = devnet.call(0, "registry_nodes", {"gpu": True})["nodes"]
    assert len(gpu_nodes) == (1 if expected["gpus"] else 0)


def test_a_node_stops_cleanly_while_its_peers_sync_from_it(
    make_devnet: Callable[..., Devnet],
) -> None:
    """Sync requests are served from libp2p's own tasks, which outlive the node's nursery:
    one in flight while the registry closes its store must not crash the stop."""
    busy = replace(DEVNET_REGISTRY, announce_interval_ms=100, capability_ttl_ms=2000,
                   sync_interval_ms=100)
    devnet = make_devnet(3, validators=1, registry=busy)
    for _ in range(8):
        wait_for(lambda: stats(devnet, 2)["counters"].get("sync_requests_served", 0) > 0,
                 DEADLINE_S, "node2 serving sync requests")
        assert devnet.stop(2) == 0
        devnet.start(2)
        devnet.wait_ready(2)
