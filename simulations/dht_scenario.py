"""DHT scenario: N nodes join, publish, churn, look up; measure success, hops and speed.

Run: ``python -m simulations.dht_scenario --nodes 2000 --seed 1 --churn 0.2``.

Rules:
1. Everything is decided by ``--seed``: joins, bootstrap peers, churn victims and times,
   lookup initiators and targets, the network's latency, loss and duplication. A run that
   misses a target prints the exact command that replays it.
2. Success is judged against ground truth the simulator knows and the nodes do not:
   - FIND_NODE for a random target succeeds when the first *settled* live peer in the
     result is the settled live node truly closest to the target. Settled: up since at
     least ``settle_ms`` before the lookup started and still up when it ended (a node that
     joined a second ago cannot be known yet; the initiator itself is excluded).
   - GET_VALUE succeeds when it returns the newest version published for the key.
   - GET_PROVIDERS succeeds when it returns the node that provided the key (its provider
     record outlives it until the TTL, as in any Kademlia DHT).
3. The timeline (virtual ms): joins spread over ``join_window_ms``; settle; publish
   (records and provider records); a churn window in which ``churn`` x N nodes crash (half
   restart later from their persisted table, half are replaced by new nodes) while lookups
   run; then a late phase after the records' TTL in which mortal records (signed by a key
   their publisher does not hold, so it cannot re-sign them) must have expired and
   republished ones must still be found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nacl.signing import SigningKey

from dht.lookup import LookupResult
from dht.node import DhtNode
from dht.node_effects import (
    MINUTE_MS,
    Bootstrap,
    CommandFinished,
    DhtConfig,
    FindNode,
    GetProviders,
    GetValue,
    Provide,
    PutValue,
)
from dht.peer import PeerInfo
from dht.records import Ed25519Signer, RecordBody, SignedRecord, pk_key, registry_key, sign_record
from dht.routing import RoutingTable
from simulations.dht_adapter import DhtSimAdapter, sim_addr
from simulations.sim import Address, NetworkModel, Simulator


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioConfig:
    nodes: int = 200
    seed: int = 1
    churn: float = 0.2
    lookups: int = 200  # FIND_NODE lookups; as many GET_VALUE; a quarter as many GET_PROVIDERS
    records: int = 40
    loss: float = 0.01
    duplication: float = 0.01
    wire: bool = False
    bootstrap_peers: int = 3
    join_interval_ms: int = 100
    settle_ms: int = 60_000
    churn_window_ms: int = 20 * MINUTE_MS
    record_ttl_ms: int = 30 * MINUTE_MS
    republish_interval_ms: int = 10 * MINUTE_MS
    bucket_refresh_idle_ms: int = 30 * MINUTE_MS
    """Production refreshes idle buckets every 10 min; in a one-hour simulation that is
    most of the traffic (95% of lookups at 300 nodes), so the scenario uses 30 min."""

    def command(self) -> str:
        flags = (f"--nodes {self.nodes} --seed {self.seed} --churn {self.churn} "
                 f"--lookups {self.lookups} --records {self.records} --loss {self.loss} "
                 f"--duplication {self.duplication}")
        return f"python -m simulations.dht_scenario {flags}" + (" --wire" if self.wire else "")

    def dht_config(self) -> DhtConfig:
        """Production limits, with record lifetimes shortened to fit a simulated hour."""
        return DhtConfig(record_ttl_ms=self.record_ttl_ms,
                         record_republish_interval_ms=self.republish_interval_ms,
                         provider_ttl_ms=self.record_ttl_ms,
                         provider_republish_interval_ms=self.republish_interval_ms,
                         bucket_refresh_idle_ms=self.bucket_refresh_idle_ms)


@dataclass(slots=True)
class _Pending:
    kind: str
    initiator: Address
    started_ms: int
    target: int = 0
    key: bytes = b""
    expected: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    lookups: dict[str, dict[str, Any]] = field(default_factory=dict)
    expiry: dict[str, Any] = field(default_factory=dict)
    simulator: dict[str, Any] = field(default_factory=dict)
    node_counters: dict[str, int] = field(default_factory=dict)
    trace_digest: str = ""
    results_digest: str = ""
    wall_s: float = 0.0
    messages_per_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def _percentile(values: list[int], fraction: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class DhtScenario:
    """Builds and drives one seeded run; ``run()`` returns a ``Report``."""

    def __init__(self, config: ScenarioConfig) -> None:
        self.config = config
        self.dht_config = config.dht_config()
        self.rng = random.Random(f"scenario/{config.seed}")
        self.adapter = DhtSimAdapter(wire=config.wire)
        self.sim = Simulator(seed=config.seed, adapter=self.adapter, on_output=self._on_output,
                             network=NetworkModel(loss=config.loss,
                                                  duplication=config.duplication))
        self.sim.replay_command = config.command()
        self.peers: dict[Address, PeerInfo] = {}
        self.up_since: dict[Address, int] = {}
        self.joined: list[Address] = []
        self.signers: dict[Address, Ed25519Signer] = {}
        self.next_address = 0
        self.next_command = 1
        self.pending: dict[int, _Pending] = {}
        self.outcomes: dict[str, list[tuple[bool, int, int, bool]]] = {}
        self.latest: dict[bytes, tuple[int, int]] = {}
        self.mortal: list[bytes] = []
        self.immortal: list[bytes] = []
        self.provided: dict[bytes, Address] = {}
        self.digest_parts: list[str] = []
        self.lost_to_crash = 0
        publishers = self.rng.sample(range(config.nodes), min(config.nodes, config.records))
        self.publishers: list[tuple[Address, SigningKey]] = []
        for index, address in enumerate(publishers):
            signing_key = SigningKey(self.rng.randbytes(32))
            self.publishers.append((address, signing_key))
            if index % 2 == 0:  # republishable: the node holds the record's key
                self.signers[address] = Ed25519Signer(signing_key)

    # -- nodes -----------------------------------------------------------------------------

    def _factory(self, address: Address, persisted: Any, rng: random.Random) -> DhtNode:
        own = self.peers[address]
        table = None
        if persisted is not None:
            table = RoutingTable.from_snapshot(persisted, own.peer_id,
                                               bucket_size=self.dht_config.k)
        return DhtNode(own=own, rng=rng, config=self.dht_config, table=table,
                       signer=self.signers.get(address), now_ms=self.sim.now_ms)

    def _new_node(self, sim: Simulator) -> Address:
        address = self.next_address
        self.next_address += 1
        self.peers[address] = PeerInfo(peer_id=b"sim-peer-%d" % address,
                                       addrs=(sim_addr(address),))
        sim.add_node(address, self._factory)
        self._bootstrap(sim, address)
        return address

    def _bootstrap(self, sim: Simulator, address: Address) -> None:
        live = [a for a in self.joined[-200:] if sim.is_up(a) and a != address]
        seeds = self.rng.sample(live, min(self.config.bootstrap_peers, len(live)))
        sim.inject(address, Bootstrap(command_id=None,
                                      peers=tuple(self.peers[a] for a in seeds)))
        self.up_since[address] = sim.now_ms
        self.joined.append(address)

    def _crash(self, sim: Simulator) -> None:
        candidates = [a for a in self.joined if sim.is_up(a) and a not in self.signers]
        if not candidates:
            return
        victim = self.rng.choice(candidates)
        self.up_since.pop(victim, None)
        for command_id in [c for c, p in self.pending.items() if p.initiator == victim]:
            del self.pending[command_id]  # its answer died with it: not a lookup failure
            self.lost_to_crash += 1
        if self.rng.random() < 0.5:
            sim.crash(victim)
            downtime = self.rng.randint(30_000, 5 * MINUTE_MS)
            sim.schedule(sim.now_ms + downtime, lambda s: self._restart(s, victim))
        else:
            sim.remove(victim)
            self.joined.remove(victim)
            self._new_node(sim)

    def _restart(self, sim: Simulator, address: Address) -> None:
        sim.restart(address)
        self.joined.remove(address)
        self._bootstrap(sim, address)

    # -- commands --------------------------------------------------------------------------

    def _command(self, sim: Simulator, address: Address, pending: _Pending,
                 make: Any) -> None:
        command_id = self.next_command
        self.next_command += 1
        self.pending[command_id] = pending
        sim.inject(address, make(command_id))

    def _random_live(self, sim: Simulator) -> Address:
        while True:
            address = self.rng.choice(self.joined)
            if sim.is_up(address):
                return address

    def _lookup_find(self, sim: Simulator) -> None:
        address = self._random_live(sim)
        target = self.rng.getrandbits(256)
        self._command(sim, address, _Pending(kind="find_node", initiator=address,
                                             started_ms=sim.now_ms, target=target),
                      lambda cid: FindNode(command_id=cid, target=target))

    def _lookup_get(self, sim: Simulator, key: bytes, kind: str = "get_value") -> None:
        address = self._random_live(sim)
        self._command(sim, address, _Pending(kind=kind, initiator=address,
                                             started_ms=sim.now_ms, key=key,
                                             expected=self.latest.get(key, (0, 0))),
                      lambda cid: GetValue(command_id=cid, key=key))

    def _lookup_providers(self, sim: Simulator, key: bytes) -> None:
        address = self._random_live(sim)
        self._command(sim, address, _Pending(kind="get_providers", initiator=address,
                                             started_ms=sim.now_ms, key=key),
                      lambda cid: GetProviders(command_id=cid, key=key))

    def _publish(self, sim: Simulator) -> None:
        """Records: half republishable (signed by the node's own key), half mortal."""
        for index, (address, signing_key) in enumerate(self.publishers):
            public_key = bytes(signing_key.verify_key)
            mortal = index % 2 == 1
            key = pk_key(public_key) if index % 4 < 2 else registry_key(public_key, "model")
            value = b"\x81\xa4name\xa5model" if key.startswith(b"/registry/") else b"v1"
            record = self._record(key, value, 1, Ed25519Signer(signing_key), address)
            (self.mortal if mortal else self.immortal).append(key)
            sim.inject(address, PutValue(command_id=None, record=record), sim.now_ms + 5_000)
            if index % 3 == 0:  # a newer version later: lookups must return seq 2
                newer = self._record(key, value, 2, Ed25519Signer(signing_key), address)
                sim.inject(address, PutValue(command_id=None, record=newer), sim.now_ms + 30_000)
            content = b"cid-%d" % index
            self.provided[content] = address
            sim.inject(address, Provide(command_id=None, key=content), sim.now_ms + 5_000)

    def _record(self, key: bytes, value: bytes, seq: int, signer: Ed25519Signer,
                address: Address) -> SignedRecord:
        body = RecordBody(key=key, value=value, seq=seq,
                          expires_at_ms=self.sim.now_ms + self.config.record_ttl_ms,
                          publisher=self.peers[address].peer_id)
        self.latest[key] = max(self.latest.get(key, (0, 0)), (seq, 0))
        return sign_record(body, signer)

    # -- judging ---------------------------------------------------------------------------

    def _on_output(self, address: Address, now_ms: int, effect: Any) -> None:
        if not isinstance(effect, CommandFinished):
            return
        pending = self.pending.pop(effect.command_id, None)
        if pending is None or not isinstance(effect.result, LookupResult):
            return
        result = effect.result
        if pending.kind == "find_node":
            ok = self._judge_find(pending, result, now_ms)
        elif pending.kind in ("get_value", "get_value_late"):
            record = result.record
            ok = record is not None and record.body.seq >= pending.expected[0]
        elif pending.kind == "get_expired":
            ok = result.record is None
        else:
            provider = self.peers[self.provided[pending.key]].peer_id
            ok = any(peer.peer_id == provider for peer in result.providers)
        self.outcomes.setdefault(pending.kind, []).append(
            (ok, result.rounds, result.peers_contacted, result.completed))
        self.digest_parts.append(f"{effect.command_id}:{int(ok)}:{result.rounds}")

    def _judge_find(self, pending: _Pending, result: LookupResult, now_ms: int) -> bool:
        settled_before = pending.started_ms - self.config.settle_ms
        peers = self.peers

        def settled(address: Address) -> bool:
            since = self.up_since.get(address)
            return (since is not None and since <= settled_before and self.sim.is_up(address)
                    and address != pending.initiator)

        truth = min((a for a in self.up_since if settled(a)),
                    key=lambda a: peers[a].key ^ pending.target, default=None)
        for peer in result.closest:
            address = self.adapter.address_of(peer)
            if address is not None and settled(address):
                return address == truth
        return truth is None

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Report:
        config, sim = self.config, self.sim
        started = time.perf_counter()
        for index in range(config.nodes):
            sim.schedule(index * config.join_interval_ms, lambda s: self._new_node(s))
        joined_ms = config.nodes * config.join_interval_ms + config.settle_ms
        sim.schedule(joined_ms, self._publish)
        churn_start = joined_ms + 2 * MINUTE_MS
        window = config.churn_window_ms
        for _ in range(int(config.churn * config.nodes)):
            sim.schedule(churn_start + self.rng.randrange(window), self._crash)
        for _ in range(config.lookups):
            at_ms = churn_start + self.rng.randrange(window)
            sim.schedule(at_ms, self._lookup_find)
            sim.schedule(at_ms + 1, self._schedule_get)
        for index in range(max(1, config.lookups // 4)):
            at_ms = churn_start + self.rng.randrange(window)
            sim.schedule(at_ms, lambda s, i=index: self._lookup_providers(
                s, b"cid-%d" % (i % max(1, len(self.provided)))))
        late_ms = joined_ms + config.record_ttl_ms + 10 * MINUTE_MS
        sim.schedule(late_ms, self._late_checks)
        sim.run_until(late_ms + 3 * MINUTE_MS)
        return self._report(time.perf_counter() - started)

    def _schedule_get(self, sim: Simulator) -> None:
        keys = self.mortal + self.immortal
        if keys:
            self._lookup_get(sim, self.rng.choice(keys))

    def _late_checks(self, sim: Simulator) -> None:
        """After the TTL: mortal records must be gone, republished ones still found."""
        for key in self.mortal:
            address = self._random_live(sim)
            self._command(sim, address, _Pending(
                kind="get_expired", initiator=address, started_ms=sim.now_ms, key=key),
                lambda cid, k=key: GetValue(command_id=cid, key=k))
        for key in self.immortal:
            self._lookup_get(sim, key, kind="get_value_late")

    def _report(self, wall_s: float) -> Report:
        config = self.config
        report = Report(config=asdict(config))
        for kind, outcomes in sorted(self.outcomes.items()):
            rounds = [o[1] for o in outcomes]
            contacted = [o[2] for o in outcomes]
            report.lookups[kind] = {
                "count": len(outcomes),
                "success_rate": sum(o[0] for o in outcomes) / len(outcomes),
                "deadline_hit": sum(not o[3] for o in outcomes),
                "rounds_mean": sum(rounds) / len(rounds), "rounds_p50": _percentile(rounds, .5),
                "rounds_p99": _percentile(rounds, .99),
                "contacted_mean": sum(contacted) / len(contacted),
                "contacted_p50": _percentile(contacted, .5),
                "contacted_p99": _percentile(contacted, .99),
            }
        report.lookups["unfinished"] = {"count": len(self.pending),
                                        "lost_to_initiator_crash": self.lost_to_crash}
        counters: dict[str, int] = {}
        for address in self.sim.addresses():
            core = self.sim.core(address)
            if isinstance(core, DhtNode):
                for name, value in core.counters.items():
                    counters[name] = counters.get(name, 0) + value
                counters["records_expired"] = (counters.get("records_expired", 0)
                                               + core.records.expired_total)
        report.node_counters = counters
        report.expiry = {"records_expired_at_live_nodes": counters["records_expired"],
                         "republished_at_live_nodes": counters["republished"]}
        stats = self.sim.statistics()
        report.simulator = asdict(stats)
        report.trace_digest = self.sim.trace_digest()
        report.results_digest = hashlib.sha256("|".join(self.digest_parts).encode()).hexdigest()
        report.wall_s = wall_s
        report.messages_per_s = stats.messages_delivered / wall_s if wall_s else 0.0
        report.failures = self._check(report)
        return report

    def _check(self, report: Report) -> list[str]:
        failures = []
        targets = {"find_node": 0.99, "get_value": 0.99, "get_value_late": 0.99,
                   "get_expired": 0.99, "get_providers": 0.99}
        for kind, target in targets.items():
            rate = report.lookups.get(kind, {}).get("success_rate")
            if rate is not None and rate < target:
                failures.append(f"{kind} success {rate:.4f} < {target}")
        if self.pending:
            failures.append(f"{len(self.pending)} lookups never finished")
        if report.expiry["republished_at_live_nodes"] == 0 and self.immortal:
            failures.append("no republish observed")
        return failures


def _print_summary(report: Report) -> None:
    print(f"nodes={report.config['nodes']} seed={report.config['seed']} "
          f"churn={report.config['churn']} wall={report.wall_s:.1f}s "
          f"messages={report.simulator['messages_delivered']} "
          f"({report.messages_per_s:,.0f}/s)")
    for kind, figures in report.lookups.items():
        if "success_rate" not in figures:
            continue
        print(f"  {kind:15} n={figures['count']:5} success={figures['success_rate']:.4f} "
              f"rounds mean={figures['rounds_mean']:.2f} p50={figures['rounds_p50']} "
              f"p99={figures['rounds_p99']}  contacted mean={figures['contacted_mean']:.1f} "
              f"p50={figures['contacted_p50']} p99={figures['contacted_p99']} "
              f"deadline={figures['deadline_hit']}")
    print(f"  unfinished: {report.lookups['unfinished']}")
    print(f"  expiry: {report.expiry}")
    print(f"  trace digest {report.trace_digest}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="run seeds seed..seed+N-1")
    parser.add_argument("--churn", type=float, default=0.2)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--duplication", type=float, default=0.01)
    parser.add_argument("--wire", action="store_true", help="send encoded frames")
    parser.add_argument("--json", metavar="PATH", help="write the reports as JSON")
    args = parser.parse_args(argv)
    reports, failed = [], False
    for seed in range(args.seed, args.seed + args.seeds):
        config = ScenarioConfig(nodes=args.nodes, seed=seed, churn=args.churn,
                                lookups=args.lookups, records=args.records, loss=args.loss,
                                duplication=args.duplication, wire=args.wire)
        report = DhtScenario(config).run()
        _print_summary(report)
        for failure in report.failures:
            failed = True
            print(f"FAILED: {failure}\n  replay with: {config.command()}", file=sys.stderr)
        reports.append(asdict(report))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
