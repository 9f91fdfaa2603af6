"""A seeded discrete-event simulator for any sans-IO core (``handle(now_ms, input)``).

Rules:
1. Determinism: all randomness comes from one ``random.Random(seed)`` for the network and
   per-incarnation ``random.Random`` objects derived from the seed and the node address;
   there is no wall clock anywhere. The same seed, scenario and code give the same run,
   and ``trace_digest()`` proves it (tests compare digests).
2. Generality: the simulator knows nothing of the DHT. A ``CoreAdapter`` turns a core's
   effects into ``send`` / ``set_timer`` / ``persist`` / ``output`` calls, and builds the
   core's inputs for a delivered message and a fired timer. PBFT or block exchange plug in
   the same way.
3. Bounded: ``run_until`` stops at a time and after ``events_max`` events; a node may keep at
   most ``timers_per_node_max`` timers scheduled ahead (a core that leaks timers fails loudly).
4. Within one millisecond tick, events run in an order shuffled by the seeded RNG (each
   event gets a random tie-break key), so no test can lean on FIFO delivery, as Trio
   shuffles each batch of runnable tasks.

Network model (``NetworkModel``): one-way latency = ``latency_base_ms`` + an exponential
jitter with mean ``latency_jitter_mean_ms`` (a long-tailed delay, which also reorders
messages); independent loss and duplication per message; partitions are groups of
addresses, and a message between two groups is dropped when it arrives (a cut link also
loses what was in flight). A crashed node loses its core and its timers; messages to it are
dropped; ``restart`` rebuilds the core with the factory, from what it last persisted.

Addresses are ints (fast to hash and to digest).
"""

from __future__ import annotations

import hashlib
import heapq
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

Address = int

_DELIVER = 0
_TIMER = 1
_INPUT = 2
_CALL = 3
_PACK = struct.Struct(">qBqq").pack


class Core(Protocol):
    def handle(self, now_ms: int, event: Any) -> list[Any]: ...


Factory = Callable[[Address, Any, random.Random], Core]
"""(address, persisted data or None, rng for this incarnation) -> a fresh core."""


class CoreAdapter(Protocol):
    """Maps one kind of core onto the simulator (the only protocol-specific part)."""

    def apply(self, sim: Simulator, address: Address, effects: list[Any]) -> None: ...

    def message_input(self, source: Address, payload: Any) -> Any: ...

    def timer_input(self, key: Any) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkModel:
    latency_base_ms: int = 10
    latency_jitter_mean_ms: float = 20.0
    loss: float = 0.0
    duplication: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_base_ms < 0 or self.latency_jitter_mean_ms < 0:
            raise ValueError("latencies must be >= 0")
        if not (0.0 <= self.loss < 1.0 and 0.0 <= self.duplication < 1.0):
            raise ValueError("loss and duplication must be in [0, 1)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SimStatistics:
    now_ms: int
    events_processed: int
    messages_sent: int
    messages_delivered: int
    messages_lost: int
    messages_duplicated: int
    messages_to_down_nodes: int
    messages_partitioned: int
    timers_fired: int
    nodes_up: int


class _Node:
    __slots__ = ("core", "epoch", "factory", "timers", "up")

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.core: Core | None = None
        self.epoch = 0
        self.up = False
        self.timers = 0


class Simulator:
    """Virtual time, an event heap and a faulty network for many pure cores."""

    def __init__(self, *, seed: int, adapter: CoreAdapter, network: NetworkModel | None = None,
                 on_output: Callable[[Address, int, Any], None] | None = None,
                 timers_per_node_max: int = 100_000) -> None:
        self.seed = seed
        self.adapter = adapter
        self.network = network or NetworkModel()
        self.on_output = on_output
        self.timers_per_node_max = timers_per_node_max
        self.rng = random.Random(seed)
        self.now_ms = 0
        self.replay_command = f"(seed {seed})"
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self._nodes: dict[Address, _Node] = {}
        self._disk: dict[Address, Any] = {}
        self._group: dict[Address, int] = {}
        self._trace = hashlib.blake2b(digest_size=16)
        self._counts = dict.fromkeys(
            ("events", "sent", "delivered", "lost", "duplicated", "to_down", "partitioned",
             "timers"), 0)

    # -- nodes -----------------------------------------------------------------------------

    def add_node(self, address: Address, factory: Factory) -> None:
        if address in self._nodes:
            raise ValueError(f"address {address} already used")
        self._nodes[address] = _Node(factory)
        self._start(address)

    def crash(self, address: Address) -> None:
        """Stop a node now: its core, timers and undelivered inputs are lost; disk kept."""
        node = self._nodes[address]
        node.up = False
        node.core = None
        node.epoch += 1
        node.timers = 0

    def restart(self, address: Address) -> None:
        """Rebuild a crashed node's core from its factory and its last persisted data."""
        if self._nodes[address].up:
            raise ValueError(f"node {address} is up")
        self._start(address)

    def remove(self, address: Address) -> None:
        """Crash a node for good and erase its disk (a node that leaves the network)."""
        self.crash(address)
        del self._nodes[address]
        self._disk.pop(address, None)

    def is_up(self, address: Address) -> bool:
        node = self._nodes.get(address)
        return node is not None and node.up

    def addresses(self) -> list[Address]:
        return list(self._nodes)

    def core(self, address: Address) -> Core | None:
        return self._nodes[address].core

    def disk(self, address: Address) -> Any:
        return self._disk.get(address)

    # -- faults ----------------------------------------------------------------------------

    def reachable(self, source: Address, destination: Address) -> bool:
        """Whether a message from ``source`` would reach ``destination`` now."""
        node = self._nodes.get(destination)
        group = self._group
        return (node is not None and node.up
                and (not group or group.get(source, -1) == group.get(destination, -1)))

    def partition(self, groups: Iterable[Iterable[Address]]) -> None:
        """Split the network: nodes in different groups cannot talk (ungrouped: group -1)."""
        self._group = {address: index for index, group in enumerate(groups)
                       for address in group}

    def heal(self) -> None:
        self._group = {}

    # -- scheduling ------------------------------------------------------------------------

    def inject(self, address: Address, event: Any, at_ms: int | None = None) -> None:
        """Feed ``event`` to the node's current incarnation at ``at_ms`` (default: now)."""
        node = self._nodes[address]
        self._push(self.now_ms if at_ms is None else at_ms, _INPUT, address, node.epoch, event)

    def schedule(self, at_ms: int, callback: Callable[[Simulator], None]) -> None:
        """Run ``callback(sim)`` at ``at_ms`` (scenario steps: churn, lookups, checks)."""
        self._push(at_ms, _CALL, 0, 0, callback)

    # -- called by adapters ----------------------------------------------------------------

    def send(self, source: Address, destination: Address, payload: Any) -> None:
        network = self.network
        rng = self.rng
        self._counts["sent"] += 1
        if network.loss and rng.random() < network.loss:
            self._counts["lost"] += 1
            return
        copies = 1
        if network.duplication and rng.random() < network.duplication:
            copies = 2
            self._counts["duplicated"] += 1
        for _ in range(copies):
            delay = network.latency_base_ms
            if network.latency_jitter_mean_ms:
                delay += int(rng.expovariate(1.0 / network.latency_jitter_mean_ms))
            self._push(self.now_ms + delay, _DELIVER, destination, source, payload)

    def set_timer(self, address: Address, key: Any, at_ms: int) -> None:
        node = self._nodes[address]
        node.timers += 1
        if node.timers > self.timers_per_node_max:
            raise RuntimeError(f"node {address} has more than {self.timers_per_node_max} timers")
        self._push(max(at_ms, self.now_ms), _TIMER, address, node.epoch, key)

    def persist(self, address: Address, data: Any) -> None:
        self._disk[address] = data

    def output(self, address: Address, value: Any) -> None:
        if self.on_output is not None:
            self.on_output(address, self.now_ms, value)

    # -- running ---------------------------------------------------------------------------

    def run_until(self, until_ms: int, events_max: int = 50_000_000) -> None:
        """Process events up to ``until_ms`` inclusive (or ``events_max`` of them)."""
        heap = self._heap
        nodes = self._nodes
        adapter = self.adapter
        trace = self._trace.update
        counts = self._counts
        processed = 0
        while heap and heap[0][0] <= until_ms and processed < events_max:
            at_ms, _, _, kind, address, extra, payload = heapq.heappop(heap)
            self.now_ms = at_ms
            processed += 1
            if kind == _CALL:
                payload(self)
                continue
            node = nodes.get(address)
            if kind == _DELIVER:
                if node is None or not node.up:
                    counts["to_down"] += 1
                    continue
                group = self._group
                if group and group.get(extra, -1) != group.get(address, -1):
                    counts["partitioned"] += 1
                    continue
                counts["delivered"] += 1
                event = adapter.message_input(extra, payload)
            elif node is None or extra != node.epoch or not node.up:
                continue  # a timer or input for an incarnation that crashed
            elif kind == _TIMER:
                node.timers -= 1
                counts["timers"] += 1
                event = adapter.timer_input(payload)
            else:
                event = payload
            trace(_PACK(at_ms, kind, address, extra))
            assert node.core is not None
            adapter.apply(self, address, node.core.handle(at_ms, event))
        counts["events"] += processed
        if not heap or heap[0][0] > until_ms:
            self.now_ms = max(self.now_ms, until_ms)

    def trace_digest(self) -> str:
        """Digest of every event processed so far (time, kind, node, source/epoch)."""
        return self._trace.copy().hexdigest()

    def statistics(self) -> SimStatistics:
        counts = self._counts
        return SimStatistics(
            now_ms=self.now_ms, events_processed=counts["events"], messages_sent=counts["sent"],
            messages_delivered=counts["delivered"], messages_lost=counts["lost"],
            messages_duplicated=counts["duplicated"], messages_to_down_nodes=counts["to_down"],
            messages_partitioned=counts["partitioned"], timers_fired=counts["timers"],
            nodes_up=sum(1 for node in self._nodes.values() if node.up))

    def failure_message(self, reason: str) -> str:
        return f"simulation failed: {reason}\nreplay with: {self.replay_command}"

    # -- internals -------------------------------------------------------------------------

    def _start(self, address: Address) -> None:
        node = self._nodes[address]
        node.epoch += 1
        rng = random.Random(f"{self.seed}/{address}/{node.epoch}")
        node.core = node.factory(address, self._disk.get(address), rng)
        node.up = True
        node.timers = 0

    def _push(self, at_ms: int, kind: int, address: Address, extra: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, self.rng.random(), self._seq, kind, address, extra,
                                    payload))
