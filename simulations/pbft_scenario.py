"""PBFT scenario: validators under seeded faults; a safety checker, then a liveness phase.

Run: ``python -m simulations.pbft_scenario --validators 4 --seed 1 --seeds 100``.

Rules:
1. Everything is decided by ``--seed``: the fault options (``FaultOptions.swarm``, as
   TigerBeetle's VOPR randomises its options per seed), client transactions, crash victims
   and times, partitions, which replicas are Byzantine and how. A failing seed prints the
   exact command that replays it.
2. At most f replicas are Byzantine (``equivocate`` as primary of view 0, ``conflict``,
   ``silent``); honest replicas may crash (losing everything not persisted) and restart
   from their simulated disk, any number of times, during the safety phase.
3. Safety is checked on every commit, all the time: no two honest replicas commit different
   blocks at one height (so equal state roots: the root is in the block), every committed
   block's certificate holds a quorum of valid COMMITs of the configuration that agreed it
   (the validator set and epoch of the agreed state before it, which the checker computes
   by executing the agreed chain itself; with the replica's own quorum rule, so a planted
   quorum bug must show up as a real divergence), and at the end every honest replica's
   ledger root equals the agreed block's root at its height.
4. Liveness: after ``safety_ms`` the network heals (no loss, no partition), every crashed
   replica restarts, and clients resend what is not committed yet; within
   ``liveness_ms`` every honest replica must have executed every client transaction.
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

from consensus.certificates import (
    CertificateError,
    SignatureCache,
    check_commit_certificate,
    quorum_size,
)
from consensus.codec import Ed25519Signer
from consensus.genesis import UNITS_PER_FTNS, Genesis, Params
from consensus.ledger import Block, BlockInvalid, LedgerState
from consensus.messages import Signed
from consensus.replica import Replica
from consensus.replica_effects import (
    BlockCommitted,
    ClientRequest,
    EvidenceFound,
    ReplicaConfig,
    Start,
)
from consensus.tx import SignedTx, TxBody, TxKind, sign_tx
from simulations.pbft_adapter import PbftSimAdapter
from simulations.pbft_byzantine import ByzantineReplica
from simulations.sim import Address, NetworkModel, Simulator

USERS = 8
CHAIN_ID = "prsm-sim-1"


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultOptions:
    loss: float = 0.0
    duplication: float = 0.0
    latency_jitter_mean_ms: float = 20.0
    partitions: int = 0
    crashes: int = 0
    byzantine: tuple[tuple[int, str], ...] = ()

    @classmethod
    def swarm(cls, seed: int, validators: int) -> FaultOptions:
        """Random options per seed: each fault is on or off, and how hard, by the seed."""
        rng = random.Random(f"options/{seed}/{validators}")
        f = (validators - 1) // 3
        byzantine_count = rng.randint(0, f)
        chosen = rng.sample(range(validators), byzantine_count)
        if byzantine_count and rng.random() < 0.5 and 0 not in chosen:
            chosen[0] = 0  # often the first primary, so it can equivocate
        byzantine = tuple(sorted(
            (i, "equivocate" if i == 0 and rng.random() < 0.7 else
             rng.choice(("conflict", "silent"))) for i in chosen))
        return cls(loss=rng.choice((0.0, 0.01, 0.05, 0.15)),
                   duplication=rng.choice((0.0, 0.02, 0.1)),
                   latency_jitter_mean_ms=rng.choice((5.0, 20.0, 100.0)),
                   partitions=rng.choice((0, 0, 1, 3)),
                   crashes=rng.choice((0, 1, 3, 6)), byzantine=byzantine)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioConfig:
    validators: int = 4
    seed: int = 1
    txs: int = 60
    safety_ms: int = 20_000
    liveness_ms: int = 60_000
    planted_bug: str = ""
    wire: bool = False
    epoch_change: bool = False
    """Run ``pbft_epochs.EpochScenario``: a validator joins and one leaves."""

    def command(self) -> str:
        flags = (f"--validators {self.validators} --seed {self.seed} --txs {self.txs} "
                 f"--safety-ms {self.safety_ms} --liveness-ms {self.liveness_ms}")
        if self.planted_bug:
            flags += f" --planted-bug {self.planted_bug}"
        flags += " --wire" if self.wire else ""
        flags += " --epoch-change" if self.epoch_change else ""
        return f"python -m simulations.pbft_scenario {flags}"


@dataclass(slots=True)
class Report:
    config: dict[str, Any]
    options: dict[str, Any]
    heights: dict[int, int] = field(default_factory=dict)
    committed_txs: int = 0
    liveness_done_ms: int | None = None
    view_changes: int = 0
    evidence: int = 0
    state_transfers: int = 0
    simulator: dict[str, Any] = field(default_factory=dict)
    trace_digest: str = ""
    validator_sets: list[tuple[int, int]] = field(default_factory=list)
    """(epoch, size) of every configuration the agreed chain went through."""
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def _validator_signers(count: int) -> list[Ed25519Signer]:
    signers = [Ed25519Signer.from_seed(hashlib.sha256(b"validator/%d" % i).digest())
               for i in range(count)]
    return sorted(signers, key=lambda s: s.public_key)  # replica i = i-th sorted key


def _user_signers() -> list[Ed25519Signer]:
    return [Ed25519Signer.from_seed(hashlib.sha256(b"user/%d" % i).digest())
            for i in range(USERS)]


def make_genesis(validators: list[Ed25519Signer], users: list[Ed25519Signer],
                 batch_size_max: int = 50) -> Genesis:
    return Genesis(chain_id=CHAIN_ID, genesis_time_ms=0,
                   allocations=tuple((u.public_key, 1_000_000 * UNITS_PER_FTNS) for u in users),
                   validators=tuple((v.public_key, 1000 * UNITS_PER_FTNS) for v in validators),
                   params=Params(batch_size_max=batch_size_max, epoch_length_blocks=50,
                                 unbonding_period_blocks=10))


def scenario_replica_config(planted_bug: str = "") -> ReplicaConfig:
    """Production limits, with a short checkpoint interval so GC and snapshots happen."""
    return ReplicaConfig(checkpoint_interval=4, window_max=16, view_change_timeout_ms=1_500,
                         view_change_timeout_max_ms=12_000, retransmit_interval_ms=300,
                         planted_bug=planted_bug)


class PbftScenario:
    """Builds and drives one seeded run; ``run()`` returns a ``Report``."""

    def __init__(self, config: ScenarioConfig, options: FaultOptions | None = None) -> None:
        self.config = config
        self.options = options or FaultOptions.swarm(config.seed, config.validators)
        self.rng = random.Random(f"scenario/{config.seed}")
        self.signers = _validator_signers(config.validators)
        self.users = _user_signers()
        self.nodes = self._nodes()
        """The signer of each address: the genesis validators, then any later ones."""
        self.genesis = self._genesis()
        self.replica_config = scenario_replica_config(config.planted_bug)
        self.byzantine = dict(self.options.byzantine)
        self.honest = [i for i in range(len(self.nodes)) if i not in self.byzantine]
        self.network = NetworkModel(loss=self.options.loss,
                                    duplication=self.options.duplication,
                                    latency_jitter_mean_ms=self.options.latency_jitter_mean_ms)
        self.adapter = PbftSimAdapter(len(self.nodes), wire=config.wire,
                                      keys=[s.public_key for s in self.nodes])
        self.adapter.sources = self.honest
        self.sim = Simulator(seed=config.seed, adapter=self.adapter,
                             network=self.network, on_output=self._on_output)
        self.sim.replay_command = config.command()
        self.reference = LedgerState(self.genesis)
        """The agreed chain, executed by the checker (it gives each height's configuration)."""
        self.configurations: dict[int, SignatureCache] = {1: self._cache(self.reference)}
        self.unchecked: dict[int, list[tuple[Block, tuple[Signed, ...], Address]]] = {}
        self.validator_sets = [(0, len(self.reference.validators))]
        self.agreed: dict[int, tuple[bytes, bytes, Address]] = {}  # height -> hash, root, who
        self.blocks: dict[int, Block] = {}  # agreed, not yet executed by the checker
        self.failures: list[str] = []
        self.txs: list[SignedTx] = []
        self.evidence = 0
        self.crashed: set[Address] = set()

    # -- nodes -----------------------------------------------------------------------------

    def _nodes(self) -> list[Ed25519Signer]:
        return list(self.signers)

    def _genesis(self) -> Genesis:
        return make_genesis(self.signers, self.users)

    def _factory(self, address: Address, disk: Any, rng: random.Random) -> Any:
        recovered = disk.recovered() if disk is not None else None
        replica = Replica(signer=self.nodes[address], genesis=self.genesis,
                          config=self.replica_config, recovered=recovered)
        self.adapter.configs[address] = replica.validators
        kind = self.byzantine.get(address)
        if kind is None:
            return replica
        return ByzantineReplica(replica, kind, self.nodes[address], rng)

    def _on_output(self, address: Address, now_ms: int, effect: Any) -> None:
        if isinstance(effect, EvidenceFound):
            self.evidence += 1
        if not isinstance(effect, BlockCommitted) or address in self.byzantine:
            return
        block = effect.block
        if effect.certificate:
            self.unchecked.setdefault(block.height, []).append(
                (block, effect.certificate, address))
        held = self.agreed.get(block.height)
        if held is None:
            self.agreed[block.height] = (block.block_hash, block.state_root, address)
            self.blocks[block.height] = block
        elif held[0] != block.block_hash:
            self._fail(f"conflicting blocks at height {block.height}: replica {held[2]} "
                       f"committed {held[0].hex()[:16]}, replica {address} committed "
                       f"{block.block_hash.hex()[:16]} (t={now_ms} ms)")
        self._follow_agreed_chain()

    def _cache(self, state: LedgerState) -> SignatureCache:
        return SignatureCache(state.validators, 1 << 16, state.epoch)

    def _follow_agreed_chain(self) -> None:
        """Execute agreed blocks in height order (each gives the next height's
        configuration) and check every certificate seen against its height's one."""
        while self.reference.height + 1 in self.blocks:
            block = self.blocks.pop(self.reference.height + 1)
            try:
                self.reference = self.reference.apply_block(block)
            except BlockInvalid as error:
                self._fail(f"the agreed block {block.height} does not execute: {error}")
                return
            cache = self.configurations.get(block.height)
            if cache is None or cache.epoch != self.reference.epoch:
                cache = self._cache(self.reference)
                if self.reference.epoch == block.height:
                    self.validator_sets.append((block.height, len(cache.validators)))
            self.configurations[block.height + 1] = cache
        for height in [h for h in self.unchecked if h in self.configurations]:
            cache = self.configurations[height]
            quorum = quorum_size(len(cache.validators), self.config.planted_bug)
            for block, certificate, address in self.unchecked.pop(height):
                try:
                    check_commit_certificate(block, certificate, cache, quorum)
                except CertificateError as error:
                    self._fail(f"replica {address} committed height {block.height} with a "
                               f"bad certificate: {error}")
                else:
                    self._certificate_checked(block, certificate, cache)

    def _certificate_checked(self, block: Block, certificate: tuple[Signed, ...],
                             cache: SignatureCache) -> None:
        """A hook for scenarios that look at who signed (``pbft_epochs.py``)."""

    def _fail(self, reason: str) -> None:
        if len(self.failures) < 10:
            self.failures.append(reason)

    # -- faults ----------------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        config, options, rng = self.config, self.options, self.rng
        window = config.safety_ms
        for _ in range(options.partitions):
            start = rng.randrange(window // 2)
            self.sim.schedule(start, self._partition)
            self.sim.schedule(start + rng.randint(1_000, window // 3), lambda s: s.heal())
        for _ in range(options.crashes):
            victim = rng.choice(self.honest)
            start = rng.randrange(window - 2_000)
            down_ms = rng.randint(200, 5_000)
            self.sim.schedule(start, lambda s, v=victim: self._crash(s, v))
            self.sim.schedule(min(start + down_ms, window - 1),
                              lambda s, v=victim: self._restart(s, v))

    def _partition(self, sim: Simulator) -> None:
        nodes = list(range(len(self.nodes)))
        self.rng.shuffle(nodes)
        cut = self.rng.randint(1, len(nodes) - 1)
        sim.partition([nodes[:cut], nodes[cut:]])

    def _crash(self, sim: Simulator, victim: Address) -> None:
        if sim.is_up(victim):
            sim.crash(victim)
            self.crashed.add(victim)

    def _restart(self, sim: Simulator, victim: Address) -> None:
        if not sim.is_up(victim):
            sim.restart(victim)
            sim.inject(victim, Start())
        self.crashed.discard(victim)

    # -- clients ---------------------------------------------------------------------------

    def _make_txs(self) -> None:
        nonces = [0] * USERS
        for index in range(self.config.txs):
            user = self.rng.randrange(USERS)
            to = self.users[self.rng.randrange(USERS)].public_key
            kind = TxKind.TRANSFER if self.rng.random() < 0.9 else TxKind.STAKE
            body = TxBody(chain_id=CHAIN_ID, kind=kind, sender=self.users[user].public_key,
                          nonce=nonces[user], fee=10**15,
                          amount=self.rng.randint(1, 10**6) * 10**12,
                          to=to if kind is TxKind.TRANSFER else b"")
            nonces[user] += 1
            tx = sign_tx(body, self.users[user])
            self.txs.append(tx)
            at_ms = self.rng.randrange(self.config.safety_ms)
            target = self.rng.randrange(self.config.validators)
            self.sim.schedule(at_ms, lambda s, t=tx, a=target, i=index: self._submit(s, a, t, i))

    def _submit(self, sim: Simulator, address: Address, tx: SignedTx, index: int) -> None:
        if sim.is_up(address):
            sim.inject(address, ClientRequest(tx=tx.encoded, request_id=index))

    def _heal(self, sim: Simulator) -> None:
        sim.heal()
        sim.network = NetworkModel(latency_jitter_mean_ms=self.options.latency_jitter_mean_ms)
        for victim in list(self.crashed):
            self._restart(sim, victim)
        self._resend(sim)

    def _resend(self, sim: Simulator) -> None:
        """Clients retry: every transaction not yet executed everywhere, to every replica."""
        for tx in self.txs:
            for address in range(len(self.nodes)):
                if sim.is_up(address):
                    sim.inject(address, ClientRequest(tx=tx.encoded))

    def _liveness_done(self) -> bool:
        expected = {}
        for tx in self.txs:
            expected[tx.body.sender] = expected.get(tx.body.sender, 0) + 1
        for address in self.honest:
            core = self.sim.core(address)
            if core is None:
                return False
            ledger = core.ledger
            if any(ledger.account(k).nonce != count for k, count in expected.items()):
                return False
        return True

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Report:
        config, sim = self.config, self.sim
        started = time.perf_counter()
        for address in range(len(self.nodes)):
            sim.add_node(address, self._factory)
            sim.inject(address, Start())
        self._make_txs()
        self._schedule_faults()
        sim.schedule(config.safety_ms, self._heal)
        try:
            sim.run_until(config.safety_ms)
            done_ms = self._run_liveness()
        except AssertionError as error:  # a replica's invariant broke: our bug, a failure
            self._fail(f"replica invariant violated at t={sim.now_ms} ms: {error}")
            return self._report(None, time.perf_counter() - started)
        if done_ms is None:
            self._fail(f"liveness: honest replicas did not execute all {len(self.txs)} "
                       f"transactions within {config.liveness_ms} ms after healing "
                       f"(heights {self._heights()})")
        self._final_checks()
        return self._report(done_ms, time.perf_counter() - started)

    def _run_liveness(self) -> int | None:
        config, sim = self.config, self.sim
        step_ms = 1_000
        for tick in range(config.liveness_ms // step_ms):
            sim.run_until(config.safety_ms + (tick + 1) * step_ms)
            if tick % 10 == 9:
                self._resend(sim)
            if self._liveness_done():
                return sim.now_ms - config.safety_ms
        return None

    def _heights(self) -> dict[int, int]:
        return {a: self.sim.core(a).ledger.height for a in range(len(self.nodes))
                if self.sim.core(a) is not None}

    def _final_checks(self) -> None:
        for address in self.honest:
            core = self.sim.core(address)
            if core is None:
                continue
            ledger = core.ledger
            held = self.agreed.get(ledger.height)
            if ledger.height and (held is None or held[1] != ledger.state_root):
                self._fail(f"replica {address}: state root at height {ledger.height} "
                           "differs from the agreed block's")
            if ledger.supply_now() != self.genesis.total_supply:
                self._fail(f"replica {address}: total supply changed")

    def _report(self, done_ms: int | None, wall_s: float) -> Report:
        report = Report(config=asdict(self.config), options=asdict(self.options))
        report.heights = self._heights()
        report.committed_txs = len(self.txs) if done_ms is not None else 0
        report.liveness_done_ms = done_ms
        for address in range(len(self.nodes)):
            core = self.sim.core(address)
            if core is not None:
                stats = core.statistics()
                report.view_changes += stats.view_changes_started
                report.state_transfers += stats.state_transfers
        report.evidence = self.evidence
        report.validator_sets = list(self.validator_sets)
        report.simulator = asdict(self.sim.statistics())
        report.trace_digest = self.sim.trace_digest()
        report.wall_s = wall_s
        report.failures = list(self.failures)
        return report


def scenario_class(config: ScenarioConfig) -> type[PbftScenario]:
    if not config.epoch_change:
        return PbftScenario
    from simulations.pbft_epochs import EpochScenario  # it subclasses this module's class
    return EpochScenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, default=4, choices=(4, 7, 10))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="run seeds seed..seed+N-1")
    parser.add_argument("--txs", type=int, default=60)
    parser.add_argument("--safety-ms", type=int, default=20_000)
    parser.add_argument("--liveness-ms", type=int, default=60_000)
    parser.add_argument("--planted-bug", default="", choices=("", "quorum-2f"))
    parser.add_argument("--wire", action="store_true", help="send encoded frames")
    parser.add_argument("--epoch-change", action="store_true",
                        help="a fifth node joins the validator set and one leaves")
    parser.add_argument("--quiet", action="store_true", help="print failures only")
    parser.add_argument("--json", metavar="PATH", help="write the reports as JSON")
    args = parser.parse_args(argv)
    reports, failed = [], 0
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        config = ScenarioConfig(validators=args.validators, seed=seed, txs=args.txs,
                                safety_ms=args.safety_ms, liveness_ms=args.liveness_ms,
                                planted_bug=args.planted_bug, wire=args.wire,
                                epoch_change=args.epoch_change)
        report = scenario_class(config)(config).run()
        if not args.quiet:
            print(f"seed={seed} n={args.validators} byzantine={report.options['byzantine']} "
                  f"loss={report.options['loss']} crashes={report.options['crashes']} "
                  f"partitions={report.options['partitions']} heights={report.heights} "
                  f"view_changes={report.view_changes} evidence={report.evidence} "
                  f"live_after={report.liveness_done_ms}ms wall={report.wall_s:.2f}s")
        if report.failures:
            failed += 1
            for failure in report.failures:
                print(f"FAILED seed {seed}: {failure}", file=sys.stderr)
            print(f"  replay with: {config.command()}", file=sys.stderr)
        reports.append(asdict(report))
    elapsed = time.perf_counter() - started
    print(f"{args.seeds} seeds, {failed} failed, {elapsed:.1f}s "
          f"({elapsed / max(1, args.seeds):.3f}s per seed)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
