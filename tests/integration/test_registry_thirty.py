"""Thirty node processes from the devnet launcher: an announcement made at one node is in
every node's registry (each node's own receive time is recorded), and a node started after
the announcements and a node stopped and restarted catch up through the sync protocol.

Kept as light as a 30-process devnet gets on a 2-core machine: one validator, pings and
peer exchange every minute, capabilities announced once (at start), and every wait a
condition with a generous deadline. Most of the cost is the devnet itself: 30 nodes open
~435 connections (Noise + Yamux + identify in Python), about 2 minutes of both cores
when the machine is shared; after that the network idles at ~40% of one core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from prsm_node.config import NetworkConfig
from prsm_node.devnet import DEVNET_REGISTRY, Devnet, wait_for

from .test_registry_network import (
    CID_A,
    CID_B,
    model_names,
    stats,
    wait_everywhere,
    wait_gossip_forgotten,
)

# 30 processes on 2 cores: meshing and every capability took 239 s in the benchmark's
# settle phase on this VM, so the suite's 300 s per test cannot hold the whole scenario;
# each wait inside still has its own deadline.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(600)]

NODES = 30
LATE = NODES  # index of the 31st node, started after the announcements
RESTARTED = 12
DEADLINE_S = 300
CALL_TIMEOUT_S = 60
NETWORK = replace(
    NetworkConfig(), ping_interval_ms=60_000, peer_exchange_interval_ms=60_000,
    dial_timeout_ms=10_000,  # a loaded machine needs seconds for a Noise handshake
)
REGISTRY = replace(
    DEVNET_REGISTRY, announce_interval_ms=600_000, capability_ttl_ms=1_200_000,
    sync_interval_ms=10_000,
)


def received_delays_ms(devnet: Devnet, indexes: list[int], name: str) -> dict[int, int]:
    """Per node: when it took the model in, after the announcing node issued it."""
    delays = {}
    for index in indexes:
        (model,) = devnet.call(index, "registry_models", {"name": name})["models"]
        delays[index] = model["received_at_ms"] - model["issued_at_ms"]
    return delays


def test_thirty_nodes_receive_an_announcement_and_newcomers_catch_up(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(NODES + 1, NETWORK, start=False, validators=1, registry=REGISTRY)
    # While 30 processes mesh on 2 cores a node's loop can wait over 10 s for the CPU, and
    # a poll's call then timed out and failed the test inside its 300 s deadline (CI, this
    # session): a slow answer is an answer.
    devnet.call_timeout_s = CALL_TIMEOUT_S
    first = list(range(NODES))
    for index in first:
        devnet.start(index)
    for index in first:
        devnet.wait_ready(index, DEADLINE_S)
    model_topic = "/prsm/registry/model/1.0.0"

    def settled(index: int) -> bool:
        registry = stats(devnet, index)
        return registry["gossip"]["mesh"][model_topic] >= 2 and registry["entries"] == NODES

    wait_everywhere(devnet, first, settled, "a mesh and all 30 capabilities", DEADLINE_S)

    devnet.call(7, "registry_announce_model",
                {"name": "first", "architecture": "transformer", "manifest_cid": CID_A})
    wait_everywhere(devnet, first, lambda i: "first" in model_names(devnet, i), "the model",
                    DEADLINE_S)
    delays = received_delays_ms(devnet, first, "first")
    print(f"\nper-node receive delay (ms) of one announcement to {NODES} nodes: "
          f"{sorted(delays.values())}")
    assert len(delays) == NODES and all(delay >= 0 for delay in delays.values())

    wait_gossip_forgotten(devnet, first)
    devnet.start(LATE)
    devnet.wait_ready(LATE, DEADLINE_S)
    wait_for(lambda: "first" in model_names(devnet, LATE), DEADLINE_S, "the late node's model")
    assert stats(devnet, LATE)["counters"].get("sync_new", 0) >= 1

    assert devnet.stop(RESTARTED) == 0
    others = [index for index in [*first, LATE] if index != RESTARTED]
    devnet.call(3, "registry_announce_model",
                {"name": "second", "architecture": "cnn", "manifest_cid": CID_B})
    wait_everywhere(devnet, others, lambda i: "second" in model_names(devnet, i), "second model",
                    DEADLINE_S)
    wait_gossip_forgotten(devnet, others)
    devnet.start(RESTARTED)
    devnet.wait_ready(RESTARTED, DEADLINE_S)
    wait_for(lambda: "second" in model_names(devnet, RESTARTED), DEADLINE_S,
             "the restarted node's catch-up")
    restarted = stats(devnet, RESTARTED)
    assert restarted["loaded_at_start"] >= NODES, restarted["loaded_at_start"]
    assert restarted["counters"].get("sync_new", 0) >= 1, restarted["counters"]
