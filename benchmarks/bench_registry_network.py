"""Registry gossip on a real network: 30 `prsm-node run` processes on 127.0.0.1.

Run: `.venv/bin/python benchmarks/bench_registry_network.py [--nodes 30] [--announcements 100]
[--rates 10,25,50,100] [--no-flood-publish] [--out benchmarks/results/registry_network_30.json]`.

The devnet launcher starts the nodes (one validator; pings and peer exchange every minute;
capabilities announced once; loopback registry settings). Once every node has a GossipSub
mesh and all the capabilities, and the nodes have finished connecting (their summed CPU
under 80% of one core), two phases run:

- propagation: `--announcements` model announcements, one a second from a random node
  (registry traffic is a few messages a minute per node; this measures delay, not load).
  Each node records when it took each one in (`received_at_ms`); the delay to a node is
  that minus the publisher's `issued_at_ms` (same machine, same clock). Figures: delay to
  each node (p50/p99 over every delivery) and to all nodes (per announcement, its slowest
  node), delivery ratio, and how many came by gossip versus the sync protocol.
- throughput: for each offered rate, announcements for `--seconds` seconds spread over five
  publishing nodes; then wait up to 15 s for the stragglers. A rate is sustained when every
  node got every announcement by gossip and the delay to all nodes stayed under 1 s at p99.
  The nodes' summed CPU is sampled meanwhile.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from bench_common import percentile, report

from prsm_node.config import NetworkConfig
from prsm_node.devnet import DEVNET_REGISTRY, Devnet, devnet_init, wait_for
from storage.cid import raw_cid

MODEL_TOPIC = "/prsm/registry/model/1.0.0"
NETWORK = replace(
    NetworkConfig(), ping_interval_ms=60_000, peer_exchange_interval_ms=60_000,
    dial_timeout_ms=10_000,
)
REGISTRY = replace(
    DEVNET_REGISTRY, announce_interval_ms=600_000, capability_ttl_ms=1_200_000,
    sync_interval_ms=10_000,
    entries_per_signer_max=65_536,  # five publishers announce thousands of models each
)
PUBLISHERS = 5
SETTLE_S = 600
STRAGGLER_S = 15.0
PROPAGATION_GAP_S = 1.0
QUIET_CPU_PERCENT = 80
QUIET_SAMPLE_S = 5.0
LATE_MS = 500
"""A delivery this late is counted against its node (which nodes are the tail)."""


def wait_quiet(procs: list) -> int:
    """Wait (at most SETTLE_S) until the nodes together use under QUIET_CPU_PERCENT over a
    QUIET_SAMPLE_S sample: 30 nodes keep both cores busy opening their ~435 connections
    for a few minutes after they answer, and that is not what this measures. Returns the
    last sample."""
    deadline = time.monotonic() + SETTLE_S
    for proc in procs:
        proc.cpu_percent()
    while True:
        time.sleep(QUIET_SAMPLE_S)
        used = round(sum(proc.cpu_percent() for proc in procs))
        if used < QUIET_CPU_PERCENT or time.monotonic() > deadline:
            return used


def settled(devnet: Devnet, index: int, nodes: int) -> bool:
    registry = devnet.call(index, "registry_statistics")
    return registry["gossip"]["mesh"][MODEL_TOPIC] >= 2 and registry["entries"] >= nodes


def announce(client: Any, name: str) -> dict[str, Any]:
    cid = str(raw_cid(name.encode()))
    params = {"name": name, "architecture": "bench", "manifest_cid": cid}
    return client.call("registry_announce_model", params) | {"name": name}


def deliveries(devnet: Devnet, names: set[str]) -> dict[str, list[dict[str, Any]]]:
    """name -> one record per node that holds it (received_at_ms, source)."""
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with_limit = {"limit": 10_000}
    for index in range(len(devnet.nodes)):
        for model in devnet.call(index, "registry_models", with_limit)["models"]:
            if model["name"] in found:
                found[model["name"]].append(model | {"node": index})
    return found


def summarise(published: list[dict[str, Any]], got: dict[str, list], nodes: int) -> dict:
    to_node, to_all, by_source = [], [], {"gossip": 0, "sync": 0, "local": 0}
    late: dict[int, int] = {}
    for item in published:
        records = got[item["name"]]
        delays = [record["received_at_ms"] - item["issued_at_ms"] for record in records]
        to_node += delays
        for record, delay in zip(records, delays, strict=True):
            if delay >= LATE_MS:
                late[record["node"]] = late.get(record["node"], 0) + 1
        if len(records) == nodes:
            to_all.append(max(delays))
        for record in records:
            by_source[record["source"]] += 1
    total = len(published) * nodes
    return {
        "announcements": len(published),
        "delivery_ratio": round(sum(len(got[i["name"]]) for i in published) / total, 4),
        "gossip_delivery_ratio": round((by_source["gossip"] + by_source["local"]) / total, 4),
        "by_source": by_source,
        "delay_to_node_p50_ms": percentile(to_node, 0.5),
        "delay_to_node_p99_ms": percentile(to_node, 0.99),
        "delay_to_all_p50_ms": percentile(to_all, 0.5),
        "delay_to_all_p99_ms": percentile(to_all, 0.99),
        "delay_to_all_max_ms": max(to_all, default=None),
        "late_deliveries_by_node": dict(sorted(late.items(), key=lambda i: -i[1])),
    }


def churn(devnet: Devnet) -> dict[str, int]:
    """The nodes' connection churn counters summed (totals since start)."""
    total: dict[str, int] = {}
    for index in range(len(devnet.nodes)):
        for name, value in devnet.call(index, "node_statistics")["churn"].items():
            total[name] = total.get(name, 0) + value
    return total


def event_loops(devnet: Devnet) -> list[dict[str, Any]]:
    return [devnet.call(i, "node_statistics")["event_loop"] for i in range(len(devnet.nodes))]


def loop_figures(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """What held the nodes' event loops during a phase (the monitor's counters are totals
    since start; the worst stalls are maxima since start, so read them as upper bounds)."""
    return {
        "stalls": sum(a["stalls"] - b["stalls"] for a, b in zip(after, before, strict=True)),
        "full_collections": sum(a["gc_collections"][2] - b["gc_collections"][2]
                                for a, b in zip(after, before, strict=True)),
        "gc_pause_ms_max": max(a["gc_pause_ms_max"] for a in after),
        "lag_ms_max": max(a["lag_ms_max"] for a in after),
        "worst_stalls": sorted((s | {"node": i} for i, a in enumerate(after)
                                for s in a["stalls_by_location"]),
                               key=lambda s: -s["wall_ms_max"])[:5],
    }


def propagation(devnet: Devnet, count: int, rng: random.Random, procs: list) -> dict[str, Any]:
    loops_before = event_loops(devnet)
    published = []
    for proc in procs:
        proc.cpu_percent()
    for number in range(count):
        publisher = rng.randrange(len(devnet.nodes))
        with devnet.client(publisher) as client:
            began = time.perf_counter()
            item = announce(client, f"propagation-{number}")
            call_ms = round((time.perf_counter() - began) * 1000)
        published.append(item | {"node": publisher, "call_ms": call_ms})
        time.sleep(PROPAGATION_GAP_S)
    cpu = round(sum(proc.cpu_percent() for proc in procs))
    names = {item["name"] for item in published}
    nodes = len(devnet.nodes)
    wait_for(
        lambda: all(len(v) == nodes for v in deliveries(devnet, names).values()),
        60, "every announcement everywhere",
    )
    got = deliveries(devnet, names)
    return summarise(published, got, nodes) | {
        "nodes_cpu_percent": cpu,
        "event_loops": loop_figures(loops_before, event_loops(devnet)),
        "per_announcement": [per_announcement(item, got[item["name"]]) for item in published]}


def per_announcement(item: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """One announcement: its publisher, its delays to the other nodes (which tail it is)."""
    delays = sorted(record["received_at_ms"] - item["issued_at_ms"] for record in records
                    if record["node"] != item["node"])
    return {"publisher": item["node"], "call_ms": item["call_ms"],
            "delay_p50_ms": percentile(delays, 0.5),
            "delay_max_ms": max(delays, default=None),
            "late": sum(delay >= LATE_MS for delay in delays)}


def throughput(devnet: Devnet, rate: int, seconds: float, procs: list) -> dict[str, Any]:
    clients = [devnet.client(index) for index in range(PUBLISHERS)]
    published: list[dict[str, Any]] = []
    for proc in procs:
        proc.cpu_percent()
    began = time.perf_counter()
    try:
        for number in range(int(rate * seconds)):
            due = began + number / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            client = clients[number % PUBLISHERS]
            published.append(announce(client, f"rate{rate}-{number}"))
    finally:
        for client in clients:
            client.close()
    elapsed = time.perf_counter() - began
    names = {item["name"] for item in published}
    nodes = len(devnet.nodes)
    deadline = time.monotonic() + STRAGGLER_S
    got = deliveries(devnet, names)
    while time.monotonic() < deadline and any(len(v) < nodes for v in got.values()):
        time.sleep(0.5)
        got = deliveries(devnet, names)
    cpu = sum(proc.cpu_percent() for proc in procs)
    figures = summarise(published, got, nodes)
    sustained = figures["gossip_delivery_ratio"] == 1.0 and figures["delay_to_all_p99_ms"] < 1000
    return {"offered_per_s": rate, "published_per_s": round(len(published) / elapsed, 1),
            "nodes_cpu_percent": round(cpu), "sustained": sustained} | figures


def run(
    nodes: int, count: int, rates: list[int], seconds: float, seed: int, flood_publish: bool
) -> dict[str, Any]:
    rng = random.Random(seed)
    registry = replace(REGISTRY, flood_publish=flood_publish)
    with tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory:
        devnet = Devnet(devnet_init(Path(directory) / "net", nodes, NETWORK, 1, registry=registry))
        with devnet:
            began = time.monotonic()
            devnet.start_all()
            for index in range(nodes):
                devnet.wait_ready(index, SETTLE_S)
            for index in range(nodes):
                wait_for(lambda index=index: settled(devnet, index, nodes), SETTLE_S,
                         f"node{index} meshed, with every capability")
            settle_s = round(time.monotonic() - began, 1)
            procs = [psutil.Process(devnet.call(i, "node_info")["pid"]) for i in range(nodes)]
            churn_settled = churn(devnet)
            idle_cpu = wait_quiet(procs)
            figures = {"nodes": nodes, "flood_publish": flood_publish,
                       "load_average_1min": round(os.getloadavg()[0], 1),
                       "settled_after_start_s": settle_s,
                       "quiet_after_start_s": round(time.monotonic() - began, 1),
                       "idle_nodes_cpu_percent": idle_cpu,
                       "propagation": propagation(devnet, count, rng, procs)}
            figures["churn_to_settled"] = churn_settled
            figures["churn_settled_to_end_of_propagation"] = {
                name: value - churn_settled[name] for name, value in churn(devnet).items()}
            figures["throughput"] = [throughput(devnet, rate, seconds, procs) for rate in rates]
            figures["load_average_1min_after"] = round(os.getloadavg()[0], 1)
            heartbeats = devnet.call(0, "registry_statistics")["gossip"]["heartbeats"]
            figures["node0_heartbeats_per_s"] = round(heartbeats / (time.monotonic() - began), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--announcements", type=int, default=60)
    parser.add_argument("--rates", default="1,2,3,5", help="offered msg/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each rate step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-flood-publish", action="store_true",
                        help="publish to the mesh only (py-libp2p's own behaviour)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rates = [int(rate) for rate in args.rates.split(",")]
    figures = run(args.nodes, args.announcements, rates, args.seconds, args.seed,
                  not args.no_flood_publish)
    report(figures, args.out)


if __name__ == "__main__":
    main()
