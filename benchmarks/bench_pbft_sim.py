"""Simulated PBFT throughput for 4, 7 and 10 validators (no faults), in simulated and wall time.

Run: ``python benchmarks/bench_pbft_sim.py --out results.json``.

What it measures: clients submit ``--txs`` signed transfers to the primary at ``--rate``
per simulated second; the run ends when every replica has executed all of them. Figures:
committed transactions per simulated second (the protocol's throughput with the simulator's
network: 10 ms base latency + 20 ms mean exponential jitter per message) and per wall second
(how fast this machine runs the whole cluster in one process: every replica re-executes
every block and verifies signatures, so wall throughput falls with n). Signing the
transactions is done before timing. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.codec import Ed25519Signer
from consensus.genesis import UNITS_PER_FTNS, Genesis, Params
from consensus.replica import Replica
from consensus.replica_effects import (
    BlockCommitted,
    ClientRequest,
    ReplicaConfig,
    Start,
)
from consensus.tx import TxBody, TxKind, sign_tx
from simulations.pbft_adapter import PbftSimAdapter
from simulations.pbft_scenario import _validator_signers
from simulations.sim import NetworkModel, Simulator

CHAIN = "prsm-bench-1"


def run(validators: int, txs: int, rate: int, batch: int, seed: int) -> dict[str, object]:
    signers = _validator_signers(validators)
    users = [
        Ed25519Signer.from_seed(hashlib.sha256(b"bench/%d" % i).digest())
        for i in range(max(1, txs // 50))
    ]
    genesis = Genesis(
        chain_id=CHAIN,
        genesis_time_ms=0,
        allocations=tuple((u.public_key, 10**6 * UNITS_PER_FTNS) for u in users),
        validators=tuple((v.public_key, 1000 * UNITS_PER_FTNS) for v in signers),
        params=Params(batch_size_max=batch),
    )
    config = ReplicaConfig(
        mempool_max=max(20_000, txs),
        mempool_per_sender_max=64,
        view_change_timeout_ms=10_000,
        retransmit_interval_ms=1_000,
    )
    encoded = []
    for index in range(txs):
        user = users[index % len(users)]
        body = TxBody(
            chain_id=CHAIN,
            kind=TxKind.TRANSFER,
            sender=user.public_key,
            nonce=index // len(users),
            fee=10**15,
            amount=1,
            to=users[(index + 1) % len(users)].public_key,
        )
        encoded.append(sign_tx(body, user).encoded)
    executed = [0] * validators
    done_at = [0] * validators
    first_block_ms = [0]

    def on_output(address: int, now_ms: int, effect: object) -> None:
        if isinstance(effect, BlockCommitted):
            executed[address] += len(effect.block.txs)
            done_at[address] = now_ms
            if not first_block_ms[0]:
                first_block_ms[0] = now_ms

    sim = Simulator(
        seed=seed, adapter=PbftSimAdapter(validators), network=NetworkModel(), on_output=on_output
    )
    for address in range(validators):
        sim.add_node(
            address,
            lambda a, disk, rng: Replica(
                index=a, signer=signers[a], genesis=genesis, config=config
            ),
        )
        sim.inject(address, Start())
    interval_us = 1_000_000 // rate
    for index, data in enumerate(encoded):
        sim.inject(0, ClientRequest(tx=data), at_ms=100 + index * interval_us // 1000)
    started = time.perf_counter()
    horizon = 100 + txs * 1000 // rate
    while min(executed) < txs and sim.now_ms < horizon + 120_000:
        sim.run_until(sim.now_ms + 1_000)
    wall_s = time.perf_counter() - started
    simulated_s = (max(done_at) - 100) / 1000
    stats = sim.statistics()
    return {
        "validators": validators,
        "txs": txs,
        "offered_rate_per_s": rate,
        "batch_size_max": batch,
        "all_executed": min(executed) == txs,
        "simulated_s": simulated_s,
        "wall_s": round(wall_s, 3),
        "tx_per_simulated_s": round(txs / simulated_s, 1) if simulated_s > 0 else None,
        "tx_per_wall_s": round(txs / wall_s, 1),
        "messages_delivered": stats.messages_delivered,
        "blocks": sim.core(0).executed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, nargs="+", default=[4, 7, 10])
    parser.add_argument("--txs", type=int, default=5_000)
    parser.add_argument("--rate", type=int, default=20_000, help="offered tx per simulated s")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    results = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": [],
    }
    for validators in args.validators:
        result = run(validators, args.txs, args.rate, args.batch, args.seed)
        results["runs"].append(result)
        print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
