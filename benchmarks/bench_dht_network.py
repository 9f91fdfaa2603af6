"""DHT lookup latency on a real network: 20 `prsm-node run` processes on 127.0.0.1.

Run: `.venv/bin/python benchmarks/bench_dht_network.py [--nodes 20] [--lookups 400]`.
Every node bootstraps from node0 only, with peer exchange off, so routing comes from the
DHT. Each node publishes one record; then random nodes look up random records
(GET_VALUE), random peers (FIND_NODE) and a provided CID (GET_PROVIDERS). Latency is
measured inside the node (`duration_ms` of the lookup), rounds and peers contacted come
from the lookup itself. Results go in BENCHMARKS.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from dataclasses import replace
from pathlib import Path

from bench_common import percentile, report

from prsm_node.config import NetworkConfig
from prsm_node.devnet import Devnet, devnet_init, wait_for

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def summary(results: list[dict]) -> dict[str, float]:
    durations = [float(result["duration_ms"]) for result in results]
    rounds = [float(result["rounds"]) for result in results]
    return {
        "count": len(results),
        "latency_p50_ms": percentile(durations, 0.5),
        "latency_p99_ms": percentile(durations, 0.99),
        "rounds_mean": round(sum(rounds) / len(rounds), 2),
        "contacted_mean": round(sum(r["peers_contacted"] for r in results) / len(results), 1),
    }


def run(nodes: int, lookups: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    network = replace(NetworkConfig(), peer_exchange=False)
    with tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory:
        devnet = Devnet(devnet_init(Path(directory) / "net", nodes, network))
        with devnet:
            devnet.start_all()
            for index in range(nodes):
                devnet.wait_ready(index)
            for index in range(nodes):
                wait_for(
                    lambda i=index: devnet.call(i, "dht_table")["peers_total"] >= nodes // 2,
                    120,
                    f"node{index} routing table",
                )
            keys = [
                devnet.call(i, "dht_put", {"key": "b", "value": str(i)})["key"]
                for i in range(nodes)
            ]
            devnet.call(0, "dht_provide", {"cid": CID})
            gets, finds, providers, found = [], [], [], 0
            for _ in range(lookups):
                asker = rng.randrange(nodes)
                got = devnet.call(asker, "dht_get", {"key": rng.choice(keys)})
                found += got["found"]
                gets.append(got)
                other = (asker + rng.randrange(1, nodes)) % nodes  # never the asker itself
                target = devnet.nodes[other].peer_id
                finds.append(devnet.call(asker, "dht_find_peer", {"peer_id": target}))
                if len(providers) < lookups // 4:
                    providers.append(devnet.call(asker, "dht_providers", {"cid": CID}))
    return {
        "nodes": nodes,
        "get_value": summary(gets) | {"success": found / len(gets)},
        "find_node": summary(finds) | {"success": sum(f["found"] for f in finds) / len(finds)},
        "get_providers": summary(providers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = run(args.nodes, args.lookups, args.seed)
    report(figures, args.out)


if __name__ == "__main__":
    main()
