"""Plot simulated DHT lookup hops against network size from bench_dht_sim.py results.

Run: `.venv/bin/python benchmarks/plot_dht_hops.py RESULTS.json [MORE.json ...] --out PNG`
(needs matplotlib: `.venv/bin/pip install matplotlib`; it is not a node dependency).
Plots mean, p50 and p99 iterative rounds for FIND_NODE and GET_VALUE, with log2(N) for
reference: Kademlia's hop count grows with the logarithm of the network size.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(paths: list[Path]) -> list[tuple[int, dict, dict]]:
    rows = []
    for path in paths:
        for result in json.loads(path.read_text())["results"]:
            lookups = result["report"]["lookups"]
            rows.append((result["nodes"], lookups["find_node"], lookups["get_value"]))
    return sorted(rows, key=lambda row: row[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rows = load(args.results)
    sizes = [row[0] for row in rows]
    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=110)
    for column, label, colour in ((1, "FIND_NODE", "tab:blue"), (2, "GET_VALUE", "tab:green")):
        axes.plot(
            sizes,
            [row[column]["rounds_mean"] for row in rows],
            "o-",
            color=colour,
            label=f"{label} mean",
        )
        axes.plot(
            sizes,
            [row[column]["rounds_p99"] for row in rows],
            "^--",
            color=colour,
            alpha=0.6,
            label=f"{label} p99",
        )
    axes.plot(
        sizes,
        [math.log2(size) / 3 for size in sizes],
        ":",
        color="grey",
        label="log2(N) / 3 (reference)",
    )
    axes.set_xscale("log")
    axes.set_xlabel("simulated nodes (20% churn, 1% loss, 1% duplication)")
    axes.set_ylabel("iterative rounds per lookup")
    axes.set_title("PRSM DHT: lookup hops against network size (k=20, alpha=3)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
