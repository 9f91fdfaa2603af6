"""Benchmark: simulated DHT lookup hops and success rate by network size, simulator speed.

Run: ``python benchmarks/bench_dht_sim.py --out bench-dht.json`` (sizes 100, 500, 2000;
add ``--with-5000`` for 5,000 nodes). Every size runs the seeded churn scenario of
``simulations/dht_scenario.py`` (20% churn, 1% loss, 1% duplication by default) and prints
one line per size: FIND_NODE / GET_VALUE success, rounds (iterative hops) and peers
contacted (mean, p50, p99), and simulated messages delivered per wall-clock second.
This is not a test: it asserts nothing and records the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulations.dht_scenario import DhtScenario, ScenarioConfig


def run_size(nodes: int, args: argparse.Namespace) -> dict[str, object]:
    config = ScenarioConfig(
        nodes=nodes,
        seed=args.seed,
        churn=args.churn,
        lookups=args.lookups,
        records=args.records,
        loss=args.loss,
        duplication=args.duplication,
    )
    report = DhtScenario(config).run()
    find, get = report.lookups["find_node"], report.lookups["get_value"]
    print(
        f"{nodes:>6} nodes  find_node success {find['success_rate']:.4f} "
        f"rounds {find['rounds_mean']:.2f}/{find['rounds_p50']}/{find['rounds_p99']} "
        f"contacted {find['contacted_mean']:.1f}/{find['contacted_p50']}/"
        f"{find['contacted_p99']}  get_value success {get['success_rate']:.4f} "
        f"rounds {get['rounds_mean']:.2f}  sim {report.messages_per_s:,.0f} msg/s "
        f"({report.simulator['messages_delivered']:,} msgs in {report.wall_s:.1f} s)",
        flush=True,
    )
    for failure in report.failures:
        print(f"  FAILED: {failure}; replay: {config.command()}", flush=True)
    return {"nodes": nodes, "command": config.command(), "report": asdict(report)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 500, 2000])
    parser.add_argument("--with-5000", action="store_true", help="also run 5,000 nodes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--churn", type=float, default=0.2)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--records", type=int, default=40)
    parser.add_argument("--loss", type=float, default=0.01)
    parser.add_argument("--duplication", type=float, default=0.01)
    args = parser.parse_args(argv)
    sizes = list(args.sizes) + ([5000] if args.with_5000 else [])
    started = time.time()
    results = [run_size(nodes, args) for nodes in sizes]
    document = {
        "benchmark": "dht_sim",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "args": vars(args),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(document, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
