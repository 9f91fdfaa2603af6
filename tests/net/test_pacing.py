"""Pings and peer exchange visit peers one at a time over the interval (peers.py rule 3),
run on trio's MockClock: no wall-clock time passes."""

from __future__ import annotations

import itertools
import random

import pytest
import trio
import trio.testing

from prsm_node.net.peers import PeerManager, pacing_delays

INTERVAL_S = 60.0


def test_pacing_fills_the_interval_evenly() -> None:
    assert pacing_delays(4, INTERVAL_S) == [15.0] * 4
    assert pacing_delays(0, INTERVAL_S) == []
    assert sum(pacing_delays(29, INTERVAL_S)) == pytest.approx(INTERVAL_S)


def _manager_with_peers(peers: list[str], nursery: trio.Nursery) -> PeerManager:
    """The real PeerManager's pacing state, without a host (only rounds are exercised)."""
    manager = object.__new__(PeerManager)
    manager._directions = {peer: "outbound" for peer in peers}
    manager._rng = random.Random(7)
    manager._nursery = nursery
    return manager


def test_a_round_visits_each_peer_once_spread_over_the_interval() -> None:
    peers = [f"peer{index}" for index in range(6)]
    visits: list[tuple[float, str]] = []

    async def visit(peer: str) -> None:
        visits.append((trio.current_time(), peer))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = _manager_with_peers(peers, nursery)
            nursery.start_soon(manager._paced_rounds, INTERVAL_S, visit)
            await trio.sleep(3 * INTERVAL_S)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    first_round = visits[: len(peers)]
    assert sorted(peer for _, peer in first_round) == peers
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(first_round)]
    assert all(abs(gap - INTERVAL_S / len(peers)) < 1e-6 for gap in gaps)
    assert len(visits) >= 2 * len(peers)


def test_a_node_without_peers_waits_a_whole_interval_per_round() -> None:
    visits: list[str] = []

    async def visit(peer: str) -> None:
        visits.append(peer)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            manager = _manager_with_peers([], nursery)
            nursery.start_soon(manager._paced_rounds, INTERVAL_S, visit)
            await trio.sleep(3 * INTERVAL_S)
            manager._directions["late"] = "inbound"
            await trio.sleep(2 * INTERVAL_S)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert visits and set(visits) == {"late"}
