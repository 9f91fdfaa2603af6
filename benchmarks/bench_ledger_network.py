"""FTNS ledger throughput and commit latency: 4 validators as separate processes on 127.0.0.1.

Run: `.venv/bin/python benchmarks/bench_ledger_network.py [--validators 4] [--seconds 20]
[--clients-per-node 24]`. Each node signs transfers with its own key (`tx_transfer`, which
waits for the commit); `clients-per-node` control connections per node keep submitting for
the duration. Latency is what a client sees: submit to commit acknowledgement. Throughput
is acknowledged commits per second. Results go in BENCHMARKS.md with date and machine.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from bench_common import percentile, report

from prsm_node.control import ControlClientError
from prsm_node.devnet import Devnet, devnet_init, wait_for

SINK = "aa" * 32


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


def run(validators: int, seconds: float, clients_per_node: int) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory,
        Devnet(devnet_init(Path(directory) / "net", validators)) as devnet,
    ):
        devnet.start_all()
        for index in range(validators):
            devnet.wait_ready(index)
        for index in range(validators):
            wait_for(
                lambda i=index: len(devnet.call(i, "peers_list")["peers"]) == validators - 1,
                60,
                f"node{index} meshed",
            )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients-per-node", type=int, default=24)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = run(args.validators, args.seconds, args.clients_per_node)
    report(figures, args.out)


if __name__ == "__main__":
    main()
