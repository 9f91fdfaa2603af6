"""A small PBFT cluster on the simulator, for hand-written replica scenarios."""

from __future__ import annotations

import random
from typing import Any

from consensus.genesis import Genesis
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
from simulations.pbft_scenario import (
    CHAIN_ID,
    _user_signers,
    _validator_signers,
    make_genesis,
)
from simulations.sim import Address, NetworkModel, Simulator


class Cluster:
    def __init__(self, n: int = 4, *, seed: int = 1, config: ReplicaConfig | None = None,
                 network: NetworkModel | None = None, wrap: Any = None,
                 adapter: Any = None, factory: Any = None,
                 genesis: Genesis | None = None) -> None:
        self.n = n
        self.signers = _validator_signers(n)
        self.users = _user_signers()
        self.genesis = genesis or make_genesis(self.signers, self.users)
        self.config = config or ReplicaConfig(checkpoint_interval=4, window_max=16,
                                              view_change_timeout_ms=1_000,
                                              retransmit_interval_ms=200)
        self.wrap = wrap or (lambda address, replica, rng: replica)
        self.commits: dict[Address, list[BlockCommitted]] = {a: [] for a in range(n)}
        self.outputs: list[tuple[Address, Any]] = []
        self.sim = Simulator(seed=seed, adapter=adapter or PbftSimAdapter(n),
                             network=network or NetworkModel(), on_output=self._output)
        self.nonces = [0] * len(self.users)
        for address in range(n):
            self.sim.add_node(address, factory or self.factory)
            self.sim.inject(address, Start())

    def factory(self, address: Address, disk: Any, rng: random.Random) -> Any:
        replica = Replica(index=address, signer=self.signers[address], genesis=self.genesis,
                          config=self.config,
                          recovered=disk.recovered() if disk is not None else None)
        return self.wrap(address, replica, rng)

    def _output(self, address: Address, now_ms: int, effect: Any) -> None:
        self.outputs.append((address, effect))
        if isinstance(effect, BlockCommitted):
            self.commits[address].append(effect)

    def evidence(self) -> list[Any]:
        return [e for _, e in self.outputs if isinstance(e, EvidenceFound)]

    def transfer(self, user: int = 0, amount: int = 10**15) -> SignedTx:
        body = TxBody(chain_id=CHAIN_ID, kind=TxKind.TRANSFER,
                      sender=self.users[user].public_key, nonce=self.nonces[user],
                      fee=10**15, amount=amount, to=self.users[(user + 1) % 8].public_key)
        self.nonces[user] += 1
        return sign_tx(body, self.users[user])

    def submit(self, count: int, at_ms: int, to: Address | None = None,
               spacing_ms: int = 10, targets: list[Address] | None = None) -> list[SignedTx]:
        txs = []
        for index in range(count):
            tx = self.transfer(index % len(self.users))
            txs.append(tx)
            pool = targets or list(range(self.n))
            target = pool[index % len(pool)] if to is None else to
            self.sim.schedule(at_ms + index * spacing_ms, lambda s, t=tx, a=target: (
                s.inject(a, ClientRequest(tx=t.encoded, request_id=1)) if s.is_up(a) else None))
        return txs

    def core(self, address: Address) -> Replica:
        core = self.sim.core(address)
        return getattr(core, "inner", core)

    def heights(self) -> list[int]:
        return [self.core(a).executed if self.sim.is_up(a) else -1 for a in range(self.n)]

    def assert_agreement(self, among: list[Address] | None = None) -> None:
        """No two replicas committed different blocks at one height."""
        seen: dict[int, bytes] = {}
        for address in among if among is not None else range(self.n):
            for commit in self.commits[address]:
                held = seen.setdefault(commit.block.height, commit.block.block_hash)
                assert held == commit.block.block_hash, f"divergence at {commit.block.height}"
