"""Benchmark: peer-to-peer block exchange between real `prsm-node run` processes on 127.0.0.1.

Run: ``python benchmarks/bench_storage_network.py --out bench-storage-network.json``
(64 MiB by default, ``--size-mib N`` to change). Starts a devnet of 4 nodes with default
settings (fsync on), then measures:
- ``store add`` through the CLI on node0 (a fresh interpreter, as a user runs it);
- node1 fetching the file from 1 provider (node0), node2 from 2, node3 from 3 at once;
- the machine's raw sha256 throughput, in the same run, as the hashing bound.
Each fetch's figure is the node's own fetch duration (``duration_ms``: provider lookup,
transfer, verification and storage, not writing the output file). Asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prsm_node.devnet import Devnet, devnet_init, wait_for

MB = 1_000_000
NODES = 4


def sha256_mb_per_s(size: int) -> float:
    data = os.urandom(16 * 1024 * 1024)
    start = time.perf_counter()
    for _ in range(max(1, size // len(data))):
        hashlib.sha256(data).digest()
    return max(1, size // len(data)) * len(data) / (time.perf_counter() - start) / MB


def cli_add(devnet: Devnet, path: Path) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prsm_node",
            "store",
            "add",
            str(path),
            "--json",
            "--data-dir",
            str(devnet.nodes[0].data_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)["cid"], time.perf_counter() - start


def fetch(devnet: Devnet, index: int, cid: str) -> dict:
    with devnet.client(index, timeout_s=600) as client:
        return client.call("store_get", {"cid": cid})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--out")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    results: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "size_bytes": size,
    }
    with tempfile.TemporaryDirectory(prefix="bench-net-", dir="/tmp") as scratch:
        directory = Path(scratch)
        source = directory / "model.bin"
        source.write_bytes(os.urandom(size))
        with Devnet(devnet_init(directory / "net", NODES)) as devnet:
            devnet.start_all()
            for index in range(NODES):
                devnet.wait_ready(index)
            for index in range(NODES):
                wait_for(
                    lambda i=index: devnet.call(i, "dht_table")["peers_total"] >= NODES - 1,
                    60,
                    f"node{index} DHT table",
                )
            cid, add_s = cli_add(devnet, source)
            results["cli_add_mb_per_s"] = round(size / add_s / MB, 1)
            print(
                f"store add (CLI, fsync on)   {results['cli_add_mb_per_s']:>8.1f} MB/s "
                f"({add_s:.2f} s)"
            )
            for index, providers in ((1, 1), (2, 2), (3, 3)):
                outcome = fetch(devnet, index, cid)
                seconds = outcome["duration_ms"] / 1000
                figure = round(size / seconds / MB, 1)
                results[f"fetch_{providers}_providers_mb_per_s"] = figure
                results[f"fetch_{providers}_providers_by_peer"] = outcome["bytes_by_peer"]
                print(
                    f"fetch from {providers} provider(s)     {figure:>8.1f} MB/s ({seconds:.2f} s,"
                    f" {len(outcome['bytes_by_peer'])} peers sent blocks)"
                )
    results["sha256_mb_per_s"] = round(sha256_mb_per_s(size), 1)
    print(f"sha256 (one core)           {results['sha256_mb_per_s']:>8.1f} MB/s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
