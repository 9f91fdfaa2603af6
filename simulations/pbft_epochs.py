"""PBFT scenario with validator-set changes at epoch boundaries (issue #4).

Run: ``python -m simulations.pbft_scenario --epoch-change --seed 1 --seeds 100``.

Rules (besides those of ``pbft_scenario.py``, whose safety checker runs unchanged: every
certificate is checked against the configuration of its own height, derived by executing
the agreed chain):
1. The genesis validators (four by default) and one more node, the joiner, with a funded
   account. The joiner
   runs a replica from the start: passive (no votes) until a block makes it a member.
   At t=0 it sends ``stake`` and ``register_validator``; once the agreed chain shows the
   grown set, the genesis validator with the highest address (the leaver) sends
   ``unstake`` of one unit, which drops it below ``validator_stake_min``: it must leave
   at the next boundary and keep following as a passive replica.
2. Faults in the safety phase: the seed's loss, duplication, jitter (reordering),
   partitions and crashes (no Byzantine replicas: with one node down for good later, a
   Byzantine one would exceed f), plus a crash of a random genesis validator when the
   agreed chain first crosses an epoch boundary.
3. Liveness, after healing: as soon as the joiner is in the agreed set, one genesis
   validator other than the leaver is crashed for good; with five members the quorum is
   four, so blocks then commit only if the joiner votes (with seven genesis validators:
   six of eight). New transfers keep coming (one per
   ``LATE_TX_SPACING_MS``) and the run is live when every node still up has executed every
   transaction, the set grew to five and shrank to four, and the joiner's commits appear
   in certificates after the crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from consensus.certificates import SignatureCache
from consensus.codec import Ed25519Signer
from consensus.genesis import UNITS_PER_FTNS, Genesis, Params
from consensus.ledger import Block
from consensus.messages import Signed
from consensus.tx import SignedTx, TxBody, TxKind, sign_tx
from simulations.pbft_scenario import (
    CHAIN_ID,
    USERS,
    FaultOptions,
    PbftScenario,
    ScenarioConfig,
)
from simulations.sim import Address, Simulator

EPOCH_LENGTH_BLOCKS = 4
LATE_TXS = 24
LATE_TX_SPACING_MS = 250
FEE = 10**15


class EpochScenario(PbftScenario):
    """A joiner enters the set, a genesis validator leaves it, under faults."""

    def __init__(self, config: ScenarioConfig, options: FaultOptions | None = None) -> None:
        options = options or dataclasses.replace(
            FaultOptions.swarm(config.seed, config.validators), byzantine=())
        super().__init__(config, options)
        self.joiner = len(self.signers)
        self.leaver = len(self.signers) - 1
        self.victim: Address | None = None  # crashed for good in the liveness phase
        self.crash_height: int | None = None
        self.boundary_crashed = False
        self.leave_sent = False
        self.late_txs = 0
        self.joiner_commits_after_crash = 0

    def _nodes(self) -> list[Ed25519Signer]:
        return [*self.signers, Ed25519Signer.from_seed(hashlib.sha256(b"joiner/0").digest())]

    def _genesis(self) -> Genesis:
        funded = [*self.users, *self.nodes]
        return Genesis(chain_id=CHAIN_ID, genesis_time_ms=0,
                       allocations=tuple((s.public_key, 1_000_000 * UNITS_PER_FTNS)
                                         for s in funded),
                       validators=tuple((v.public_key, 1000 * UNITS_PER_FTNS)
                                        for v in self.signers),
                       params=Params(batch_size_max=50, unbonding_period_blocks=10,
                                     epoch_length_blocks=EPOCH_LENGTH_BLOCKS))

    # -- transactions ----------------------------------------------------------------------

    def _tx(self, address: Address, kind: TxKind, amount: int, to: bytes = b"") -> SignedTx:
        signer = self.nodes[address] if address >= 0 else self.users[-address - 1]
        nonce = sum(1 for t in self.txs if t.body.sender == signer.public_key)
        tx = sign_tx(TxBody(chain_id=CHAIN_ID, kind=kind, sender=signer.public_key,
                            nonce=nonce, fee=FEE, amount=amount, to=to), signer)
        self.txs.append(tx)
        return tx

    def _send_now(self, tx: SignedTx) -> None:
        for address in range(len(self.signers)):
            self._submit(self.sim, address, tx, len(self.txs))

    def _make_txs(self) -> None:
        super()._make_txs()
        stake = self._tx(self.joiner, TxKind.STAKE, 1000 * UNITS_PER_FTNS)
        register = self._tx(self.joiner, TxKind.REGISTER_VALIDATOR, 0)
        self.sim.schedule(50, lambda s: (self._send_now(stake), self._send_now(register)))

    def _late_tx(self) -> None:
        user = self.late_txs % USERS
        self.late_txs += 1
        to = self.users[(user + 1) % USERS].public_key
        self._send_now(self._tx(-user - 1, TxKind.TRANSFER, 10**12, to))

    # -- the agreed chain drives the plot --------------------------------------------------

    def _on_output(self, address: Address, now_ms: int, effect: Any) -> None:
        super()._on_output(address, now_ms, effect)
        sizes = [size for _, size in self.validator_sets]
        if len(sizes) > 1 and not self.boundary_crashed:
            self.boundary_crashed = True
            victim = self.rng.randrange(len(self.signers))
            self._crash(self.sim, victim)
            self.sim.schedule(min(self.sim.now_ms + self.rng.randint(500, 3_000),
                                  self.config.safety_ms - 1),
                              lambda s, v=victim: self._restart(s, v))
        if len(self.signers) + 1 in sizes and not self.leave_sent:
            self.leave_sent = True
            unstake = self._tx(self.leaver, TxKind.UNSTAKE, 1)
            self.sim.schedule(self.sim.now_ms + 1, lambda s: self._send_now(unstake))

    def _certificate_checked(self, block: Block, certificate: tuple[Signed, ...],
                             cache: SignatureCache) -> None:
        if self.crash_height is None or block.height <= self.crash_height:
            return
        joiner_key = self.nodes[self.joiner].public_key
        if any(cache.validators[c.signer] == joiner_key for c in certificate):
            self.joiner_commits_after_crash += 1

    # -- liveness --------------------------------------------------------------------------

    def _run_liveness(self) -> int | None:
        config, sim = self.config, self.sim
        step_ms = LATE_TX_SPACING_MS
        for tick in range(config.liveness_ms // step_ms):
            sim.run_until(config.safety_ms + (tick + 1) * step_ms)
            self._liveness_step(sim)
            if tick % 40 == 39:
                self._resend(sim)
            if self._epochs_done() and self._liveness_done():
                return sim.now_ms - config.safety_ms
        return None

    def _liveness_step(self, sim: Simulator) -> None:
        joined = self.nodes[self.joiner].public_key in self.reference.validators
        if self.victim is None and joined:
            self.victim = self.rng.randrange(len(self.signers) - 1)  # not the leaver
            self._crash(sim, self.victim)
            self.crashed.discard(self.victim)  # for good: the heal does not bring it back
            self.crash_height = self.reference.height
        if self.late_txs < LATE_TXS:
            self._late_tx()

    def _epochs_done(self) -> bool:
        sizes, genesis_size = [size for _, size in self.validator_sets], len(self.signers)
        return (genesis_size + 1 in sizes and sizes[-1] == genesis_size
                and self.late_txs >= LATE_TXS and self.joiner_commits_after_crash > 0)

    def _liveness_done(self) -> bool:
        honest = self.honest
        self.honest = [a for a in honest if a != self.victim]
        try:
            return super()._liveness_done()
        finally:
            self.honest = honest

    def _final_checks(self) -> None:
        super()._final_checks()
        if not self._epochs_done():
            self._fail(f"epochs: validator sets {self.validator_sets}, late transactions "
                       f"{self.late_txs}, joiner commits after the crash "
                       f"{self.joiner_commits_after_crash}")
