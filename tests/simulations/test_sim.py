"""The general simulator with a toy core: determinism, faults, crash and restart."""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.sim import Address, NetworkModel, Simulator

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Gossip:
    """Toy core: counts what it hears, forwards a ping to a random peer, persists a count."""

    address: Address
    peers: int
    rng: random.Random
    heard: int = 0

    def handle(self, now_ms: int, event: Any) -> list[tuple[str, Any]]:
        if event == "tick":
            return [("send", self.rng.randrange(self.peers)), ("timer", now_ms + 100)]
        self.heard += 1
        return [("persist", self.heard)]


class GossipAdapter:
    def apply(self, sim: Simulator, address: Address, effects: list[Any]) -> None:
        for kind, value in effects:
            if kind == "send":
                sim.send(address, value, "ping")
            elif kind == "timer":
                sim.set_timer(address, "tick", value)
            else:
                sim.persist(address, value)

    def message_input(self, source: Address, payload: Any) -> Any:
        return payload

    def timer_input(self, key: Any) -> Any:
        return key


def run_gossip(seed: int, network: NetworkModel, nodes: int = 20,
               until_ms: int = 5_000) -> Simulator:
    sim = Simulator(seed=seed, adapter=GossipAdapter(), network=network)
    for address in range(nodes):
        sim.add_node(address, lambda a, data, rng: Gossip(a, nodes, rng, data or 0))
        sim.inject(address, "tick")
    sim.run_until(until_ms)
    return sim


def test_same_seed_gives_identical_trace_and_other_seed_differs() -> None:
    network = NetworkModel(loss=0.1, duplication=0.1)
    first, second = run_gossip(5, network), run_gossip(5, network)
    assert first.trace_digest() == second.trace_digest()
    assert first.statistics() == second.statistics()
    assert run_gossip(6, network).trace_digest() != first.trace_digest()


def test_loss_and_duplication_rates_follow_the_model() -> None:
    stats = run_gossip(1, NetworkModel(loss=0.2, duplication=0.1)).statistics()
    assert stats.messages_sent == 20 * 51  # one send per tick at t=0,100,...,5000
    assert 0.15 < stats.messages_lost / stats.messages_sent < 0.25
    assert 0.05 < stats.messages_duplicated / stats.messages_sent < 0.15


def test_partition_drops_messages_between_groups_until_healed() -> None:
    sim = Simulator(seed=2, adapter=GossipAdapter())
    for address in range(10):
        sim.add_node(address, lambda a, data, rng: Gossip(a, 10, rng))
        sim.inject(address, "tick")
    sim.partition([range(5), range(5, 10)])
    sim.run_until(2_000)
    cut = sim.statistics().messages_partitioned
    assert cut > 0
    sim.heal()
    sim.run_until(4_000)
    assert sim.statistics().messages_partitioned == cut


def test_crash_loses_timers_and_restart_rebuilds_from_persisted_data() -> None:
    sim = run_gossip(3, NetworkModel(), nodes=5, until_ms=1_000)
    heard = sim.disk(0)
    assert heard and heard > 0
    sim.crash(0)
    assert not sim.is_up(0)
    sim.run_until(2_000)
    assert sim.statistics().messages_to_down_nodes > 0
    assert sim.disk(0) == heard  # nothing delivered while down
    sim.restart(0)
    core = sim.core(0)
    assert isinstance(core, Gossip) and core.heard == heard
    sim.inject(0, "tick")
    sim.run_until(3_000)
    assert sim.statistics().nodes_up == 5


def test_same_tick_events_are_shuffled_by_seed() -> None:
    orders = []
    for seed in (1, 2, 3, 4):
        sim = Simulator(seed=seed, adapter=GossipAdapter(),
                        network=NetworkModel(latency_base_ms=5, latency_jitter_mean_ms=0))
        seen: list[int] = []
        for address in range(6):
            sim.add_node(address, lambda a, data, rng: Gossip(a, 6, rng))
            sim.schedule(10, lambda s, a=address, out=seen: out.append(a))
        sim.run_until(10)
        orders.append(tuple(seen))
    assert len(set(orders)) > 1
    assert all(sorted(order) == list(range(6)) for order in orders)


FORBIDDEN = ("trio", "libp2p", "prsm_node")


def test_pure_packages_never_import_trio_libp2p_or_prsm_node() -> None:
    offenders = []
    files = sorted((ROOT / "dht").rglob("*.py")) + sorted((ROOT / "simulations").rglob("*.py"))
    assert len(files) >= 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if str(name).split(".")[0] in FORBIDDEN]
    assert offenders == []
