"""FTNS ledger throughput and commit latency: 4 validators as separate processes on 127.0.0.1.

Two modes. `--mode wait` (default): clients call `tx_transfer`, which waits for the commit,
so latency is submit-to-acknowledgement. `--mode admit`: each node's transfers are signed
in advance (its own key, consecutive nonces) and pushed with `tx_submit(wait=false)` in
JSON-RPC batches, as fast as the mempool takes them (`--rate 0`, the saturating load of the
issue) or at an offered rate (`--rate R` transactions per second, all nodes together);
throughput is transactions committed per second from the first push to the last commit.
Commit latency in admit mode is per transaction: from the moment its batch was sent to the
first sample (every NonceSampler.SAMPLE_S, on node 0) at which its sender's nonce had passed
it; so it includes up to one sampling period and node 0's answer time. `--block-size`
sets the genesis `batch_size_max` (transactions per block).

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
from pathlib import Path

from bench_common import cpu_seconds, percentile, report

from consensus.codec import Ed25519Signer
from consensus.genesis import Genesis, Params
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


def node_signer(devnet: Devnet, index: int) -> Ed25519Signer:
    """The node's own key: its account sends the benchmark's transfers."""
    return Ed25519Signer.from_seed(read_seed(DataDir(devnet.nodes[index].data_dir).key_file))


def presigned(devnet: Devnet, index: int, count: int) -> list[str]:
    node = devnet.nodes[index]
    signer = node_signer(devnet, index)
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


def push(devnet: Devnet, index: int, txs: list[str], batch: int, errors: list[str],
         pacing: tuple[float, float] | None, sent_at: list[float]) -> None:
    """Submit `txs` in order, `batch` to a JSON-RPC batch (one round trip each). With
    `pacing` (start, transactions per second) batch k waits for its due time; each batch's
    send time (`time.perf_counter()`) goes to `sent_at`."""
    with devnet.client(index, timeout_s=60) as client:
        for start in range(0, len(txs), batch):
            if pacing is not None:
                due = pacing[0] + start / pacing[1]
                time.sleep(max(0.0, due - time.perf_counter()))
            sent_at.append(time.perf_counter())
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


class NonceSampler:
    """The benchmark senders' nonces on node 0 (one JSON-RPC batch of `wallet_balance`),
    sampled in a thread every SAMPLE_S: a sender's transactions commit in nonce order, so
    the samples date each transaction's commit, and their sum counts the committed ones
    (the run is split into the push and what follows it)."""

    SAMPLE_S = 0.02

    def __init__(self, devnet: Devnet, senders: list[str]) -> None:
        self.samples: list[tuple[float, list[int]]] = []  # (perf_counter, nonce per sender)
        self._devnet, self._senders = devnet, senders
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _nonces(self, client: ControlClient) -> list[int]:
        replies = client.call_raw([
            {"jsonrpc": "2.0", "id": i, "method": "wallet_balance", "params": {"address": a}}
            for i, a in enumerate(self._senders)
        ])
        by_id = {reply["id"]: reply["result"]["nonce"] for reply in replies}
        return [by_id[i] for i in range(len(self._senders))]

    def _run(self) -> None:
        with self._devnet.client(0, timeout_s=30) as client:
            while not self._done.wait(self.SAMPLE_S):
                self.samples.append((time.perf_counter(), self._nonces(client)))

    def committed(self) -> int:
        return sum(self.samples[-1][1]) if self.samples else 0

    def wait_for_count(self, total: int, deadline_s: float) -> None:
        wait_for(lambda: self.committed() == total, deadline_s, f"all {total} committed")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def commit_times(self, sender: int, count: int) -> list[float]:
        """When each of `sender`'s first `count` transactions (nonces 0..count-1) was first
        seen committed."""
        times: list[float] = []
        for at, nonces in self.samples:
            while len(times) < min(nonces[sender], count):
                times.append(at)
        return times


def commit_latencies_ms(sampler: NonceSampler, sent_at: list[list[float]],
                        per_node: int, batch: int) -> list[float]:
    """Per transaction: its commit sample minus its batch's send time."""
    latencies = []
    for sender, sends in enumerate(sent_at):
        for nonce, committed in enumerate(sampler.commit_times(sender, per_node)):
            latencies.append((committed - sends[nonce // batch]) * 1000)
    return latencies


def run_admit(validators: int, per_node: int, push_batch: int, rate: float,
              block_size: int) -> dict[str, object]:
    params = replace(Params(), batch_size_max=block_size)
    with (
        scratch_dir() as directory,
        Devnet(devnet_init(Path(directory) / "net", validators, params=params)) as devnet,
    ):
        configure_for_saturation(devnet, per_node)
        batches = [presigned(devnet, index, per_node) for index in range(validators)]
        senders = [node_signer(devnet, index).public_key.hex() for index in range(validators)]
        start_meshed(devnet)
        total, errors = validators * per_node, []
        sent_at: list[list[float]] = [[] for _ in range(validators)]
        pids = [devnet.pid(index) for index in range(validators)]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        own_cpu_before = time.process_time()
        sampler = NonceSampler(devnet, senders)
        began = time.perf_counter()
        per_node_rate = rate / validators
        # The nodes' batches interleave rather than arrive together: node i starts i/V of
        # a batch interval late, so the offered load is smooth at the scale of a batch.
        threads = [
            threading.Thread(target=push, args=(
                devnet, index, batches[index], push_batch, errors,
                (began + index * push_batch / rate, per_node_rate) if rate > 0 else None,
                sent_at[index]))
            for index in range(validators)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pushed_s = time.perf_counter() - began
        committed_at_push_end = sampler.committed()
        sampler.wait_for_count(total, 300)
        elapsed = time.perf_counter() - began
        sampler.stop()
        latencies = commit_latencies_ms(sampler, sent_at, per_node, push_batch)
        cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        own_cpu = time.process_time() - own_cpu_before
        height = devnet.call(0, "ledger_head")["height"]
        roots = {devnet.call(i, "ledger_head")["state_root"] for i in range(validators)}
        frames = devnet.call(0, "node_statistics")["ledger"].get("frames_received")
    return {
        "mode": "admit",
        "validators": validators,
        "transactions": total,
        "block_size": block_size,
        "push_batch": push_batch,
        "offered_tx_per_s": rate or "saturating",
        "push_s": round(pushed_s, 2),
        "seconds": round(elapsed, 2),
        "tx_per_s": round(total / elapsed, 1),
        "latency_p50_ms": round(percentile(latencies, 0.5), 1),
        "latency_p99_ms": round(percentile(latencies, 0.99), 1),
        "latency_sample_ms": round(NonceSampler.SAMPLE_S * 1000),
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
    parser.add_argument(
        "--rate", type=float, default=0.0,
        help="admit mode: offered transactions per second, all nodes together (0: saturate)",
    )
    parser.add_argument(
        "--block-size", type=int, default=Params().batch_size_max,
        help="admit mode: the genesis batch_size_max (transactions per block)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.mode == "admit":
        figures = run_admit(args.validators, args.per_node, args.push_batch, args.rate,
                            args.block_size)
    else:
        figures = run(args.validators, args.seconds, args.clients_per_node)
    report(figures, args.out)


if __name__ == "__main__":
    main()
