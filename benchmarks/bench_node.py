"""Node foundation benchmark: start time, idle RSS, control-API round trip, ping round trip.

Run: `.venv/bin/python benchmarks/bench_node.py [--runs 5] [--out result.json]`.
Every figure comes from real `prsm-node run` processes on 127.0.0.1 started through the
devnet launcher; results go in BENCHMARKS.md with the date and the machine.

- start: wall time from spawning `prsm-node run` on an initialised data dir until the
  control socket answers `node_info` (what a user or a supervisor waits for).
- idle RSS: resident memory of a node with one peer after IDLE_S seconds.
- control round trip: `node_info` over one kept-open connection to node.sock.
- ping round trip: `/prsm/ping/1.0.0` between two nodes, measured inside the node
  (`peers_ping`), so it is the libp2p round trip without the control socket.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
from bench_common import percentile, report

from prsm_node.config import NetworkConfig
from prsm_node.devnet import Devnet, devnet_init, wait_for

IDLE_S = 5.0


def measure_start(root: Path, runs: int) -> list[float]:
    devnet = Devnet(devnet_init(root / "start", 1))
    timings = []
    with devnet:
        for _ in range(runs):
            began = time.perf_counter()
            devnet.start(0)
            devnet.wait_ready(0)
            timings.append(time.perf_counter() - began)
            devnet.stop(0)
    return timings


def measure_running_pair(root: Path, calls: int, pings: int) -> dict[str, float]:
    network = replace(NetworkConfig(), ping_interval_ms=60_000)
    with Devnet(devnet_init(root / "pair", 2, network)) as devnet:
        devnet.start_all()
        for index in range(2):
            devnet.wait_ready(index)
        wait_for(lambda: devnet.call(1, "peers_list")["peers"], 30, "the pair connected")
        time.sleep(IDLE_S)  # the figure is RSS after idling, so here we do wait
        info = devnet.call(0, "node_info")
        rss_mb = psutil.Process(info["pid"]).memory_info().rss / 2**20
        control_ms = []
        with devnet.client(0) as client:
            for _ in range(calls):
                began = time.perf_counter()
                client.call("node_info")
                control_ms.append((time.perf_counter() - began) * 1000)
        other = devnet.nodes[1].peer_id
        ping_ms = [devnet.call(0, "peers_ping", {"peer_id": other})["rtt_ms"] for _ in range(pings)]
    return {
        "idle_rss_mb": round(rss_mb, 1),
        "control_rtt_p50_ms": round(percentile(control_ms, 0.5), 3),
        "control_rtt_p99_ms": round(percentile(control_ms, 0.99), 3),
        "ping_rtt_p50_ms": round(percentile(ping_ms, 0.5), 3),
        "ping_rtt_p99_ms": round(percentile(ping_ms, 0.99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="node starts to time")
    parser.add_argument("--calls", type=int, default=2000, help="control round trips")
    parser.add_argument("--pings", type=int, default=300, help="ping round trips")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory:
        root = Path(directory)
        starts = measure_start(root, args.runs)
        figures = {
            "start_median_s": round(statistics.median(starts), 3),
            "start_max_s": round(max(starts), 3),
            **measure_running_pair(root, args.calls, args.pings),
        }
    report(figures, args.out)


if __name__ == "__main__":
    main()
