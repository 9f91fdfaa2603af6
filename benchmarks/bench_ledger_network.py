"""FTNS ledger throughput and commit latency: 4 validators as separate processes on 127.0.0.1.

Two modes. `--mode wait` (default): clients call `tx_transfer`, which waits for the commit,
so latency is submit-to-acknowledgement. `--mode admit`: each node's transfers are signed
in advance (its own key, consecutive nonces) and pushed with `tx_submit(wait=false)` as
fast as the mempool takes them; throughput is then transactions committed per second from
the first push to the last commit (the saturating load of the issue).

Run: `.venv/bin/python benchmarks/bench_ledger_network.py [--validators 4] [--seconds 20]
[--clients-per-node 24]`. Each node signs transfers with its own key (`tx_transfer`, which
waits for the commit); `clients-per-node` control connections per node keep submitting for
the duration. Latency is what a client sees: submit to commit acknowledgement. Throughput
is acknowledged commits per second. Results go in BENCHMARKS.md with date and machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from bench_common import cpu_seconds, percentile, report

from consensus.codec import Ed25519Signer
from consensus.genesis import Genesis
from consensus.tx import TxBody, TxKind, sign_tx
from prsm_node.config import load_config, render_toml
from prsm_node.control import ControlClient, ControlClientError
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, devnet_init, wait_for
from prsm_node.identity import read_seed

SINK = "aa" * 32
# PRSM_BENCH_KEEP=1 keeps the devnet's data dirs (logs included) for a post-mortem.
KEEP_DATA = os.environ.get("PRSM_BENCH_KEEP") == "1"


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A fresh directory under /tmp, removed afterwards unless PRSM_BENCH_KEEP=1."""
    if KEEP_DATA:
        directory = tempfile.mkdtemp(prefix="prsm-bench-", dir="/tmp")
        print(f"devnet data kept in {directory}", file=sys.stderr)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory:
        yield directory


def client_loop(
    devnet: Devnet, index: int, stop_at: float, latencies: list[float], errors: list[str]
) -> None:
    with devnet.client(index, timeout_s=90) as client:
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            try:
                client.call("tx_transfer", {"to": SINK, "amount": "0.001", "wait_s": 60.0})
            except ControlClientError as error:
                errors.append(str(error)[:120])
                continue
            latencies.append((time.perf_counter() - began) * 1000)


def start_meshed(devnet: Devnet) -> None:
    devnet.start_all()
    for index in range(len(devnet.nodes)):
        devnet.wait_ready(index)
    devnet.wait_meshed()


def run(validators: int, seconds: float, clients_per_node: int) -> dict[str, object]:
    with (
        scratch_dir() as directory,
        Devnet(devnet_init(Path(directory) / "net", validators)) as devnet,
    ):
        start_meshed(devnet)
        devnet.call(0, "tx_transfer", {"to": SINK, "amount": "1"})  # warm every path
        start_height = devnet.call(0, "ledger_head")["height"]
        latencies: list[float] = []
        errors: list[str] = []
        stop_at = time.monotonic() + seconds
        threads = [
            threading.Thread(
                target=client_loop, args=(devnet, i % validators, stop_at, latencies, errors)
            )
            for i in range(validators * clients_per_node)
        ]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        end_height = devnet.call(0, "ledger_head")["height"]
        heads = {devnet.call(i, "ledger_head")["state_root"] for i in range(validators)}
    return {
        "validators": validators,
        "clients": validators * clients_per_node,
        "seconds": round(elapsed, 2),
        "committed": len(latencies),
        "tx_per_s": round(len(latencies) / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "blocks": end_height - start_height,
        "tx_per_block": round(len(latencies) / max(1, end_height - start_height), 1),
        "errors": len(errors),
        "error_sample": errors[:3],
        "state_roots_after_load": len(heads),
    }


def configure_for_saturation(devnet: Devnet, per_node: int) -> None:
    """Room in each node's mempool for every pre-signed transaction of its sender."""
    for node in devnet.nodes:
        data_dir = DataDir(node.data_dir)
        config = load_config(data_dir.config_file)
        pbft = replace(config.pbft, mempool_per_sender_max=per_node, mempool_max=4 * per_node)
        control = replace(config.control, connections_max=64)
        data_dir.config_file.write_text(render_toml(replace(config, pbft=pbft, control=control)))


def presigned(devnet: Devnet, index: int, count: int) -> list[str]:
    node = devnet.nodes[index]
    signer = Ed25519Signer.from_seed(read_seed(node.data_dir / "node.key"))
    genesis = Genesis.from_json((node.data_dir / "genesis.json").read_text())
    return [
        sign_tx(
            TxBody(
                chain_id=genesis.chain_id,
                kind=TxKind.TRANSFER,
                sender=signer.public_key,
                nonce=nonce,
                fee=genesis.params.fee_min,
                amount=10**15,
                to=bytes.fromhex(SINK),
            ),
            signer,
        ).encoded.hex()
        for nonce in range(count)
    ]


def push(devnet: Devnet, index: int, txs: list[str], batch: int, errors: list[str]) -> None:
    """Submit `txs` in order, `batch` to a JSON-RPC batch (one round trip each)."""
    with devnet.client(index, timeout_s=60) as client:
        for start in range(0, len(txs), batch):
            requests = [
                {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tx_submit",
                    "params": {"tx": tx, "wait": False},
                }
                for i, tx in enumerate(txs[start : start + batch])
            ]
            try:
                replies = client.call_raw(requests)
            except ControlClientError as error:
                errors.append(str(error)[:120])
                continue
            errors.extend(str(reply["error"])[:120] for reply in replies or [] if "error" in reply)


class CommitSampler:
    """Node 0's count of committed benchmark transfers (the sink's balance), sampled in a
    thread every SAMPLE_S so the run can be split into the push and what follows it."""

    SAMPLE_S = 0.2

    def __init__(self, devnet: Devnet, began: float) -> None:
        self.samples: list[tuple[float, int]] = []
        self._devnet, self._began = devnet, began
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _count(client: ControlClient) -> int:
        balance = client.call("wallet_balance", {"address": SINK})["balance"]
        return int(Decimal(balance) * 1000)  # each transfer moves 0.001 FTNS to the sink

    def _run(self) -> None:
        with self._devnet.client(0, timeout_s=30) as client:
            while not self._done.wait(self.SAMPLE_S):
                self.samples.append((time.perf_counter() - self._began, self._count(client)))

    def latest(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def wait_for_count(self, total: int, deadline_s: float) -> None:
        with self._devnet.client(0, timeout_s=30) as client:
            wait_for(lambda: self._count(client) == total, deadline_s,
                     f"all {total} transfers committed")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_admit(validators: int, per_node: int, push_batch: int) -> dict[str, object]:
    with (
        scratch_dir() as directory,
        Devnet(devnet_init(Path(directory) / "net", validators)) as devnet,
    ):
        configure_for_saturation(devnet, per_node)
        batches = [presigned(devnet, index, per_node) for index in range(validators)]
        start_meshed(devnet)
        total, errors = validators * per_node, []
        threads = [
            threading.Thread(target=push, args=(devnet, index, batches[index], push_batch, errors))
            for index in range(validators)
        ]
        pids = [devnet.pid(index) for index in range(validators)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        own_cpu_before = time.process_time()
        began = time.perf_counter()
        sampler = CommitSampler(devnet, began)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pushed_s = time.perf_counter() - began
        committed_at_push_end = sampler.latest()
        sampler.wait_for_count(total, 300)
        elapsed = time.perf_counter() - began
        sampler.stop()
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        own_cpu = time.process_time() - own_cpu_before
        height = devnet.call(0, "ledger_head")["height"]
        roots = {devnet.call(i, "ledger_head")["state_root"] for i in range(validators)}
        frames = devnet.call(0, "node_statistics")["ledger"].get("frames_received")
    return {
        "mode": "admit",
        "validators": validators,
        "transactions": total,
        "push_batch": push_batch,
        "push_s": round(pushed_s, 2),
        "seconds": round(elapsed, 2),
        "tx_per_s": round(total / elapsed, 1),
        # Consensus alone at saturation: once every transaction is admitted, the mempools
        # are full and the nodes do nothing but order, check and execute blocks.
        "committed_by_push_end": committed_at_push_end,
        "tx_per_s_after_push": round(
            (total - committed_at_push_end) / max(1e-9, elapsed - pushed_s), 1
        ),
        "blocks": height,
        "tx_per_block": round(total / max(1, height), 1),
        "errors": len(errors),
        "error_sample": errors[:3],
        "state_roots_after_load": len(roots),
        # CPU time is what the 2 cores can give; per transaction it does not swing with
        # the neighbours' load the way wall-clock throughput does.
        "cpu_s_by_node": [round(c, 2) for c in cpu],
        "cpu_us_per_tx_nodes": round(sum(cpu) / total * 1e6),
        "cpu_us_per_tx_load_generator": round(own_cpu / total * 1e6),
        "node0_pbft_frames_received": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients-per-node", type=int, default=24)
    parser.add_argument("--mode", choices=["wait", "admit"], default="wait")
    parser.add_argument("--per-node", type=int, default=2500, help="admit mode: txs per node")
    parser.add_argument(
        "--push-batch", type=int, default=100, help="admit mode: tx_submit calls per JSON-RPC batch"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.mode == "admit":
        figures = run_admit(args.validators, args.per_node, args.push_batch)
    else:
        figures = run(args.validators, args.seconds, args.clients_per_node)
    report(figures, args.out)


if __name__ == "__main__":
    main()
