"""Job overhead on a 4-node devnet: submit to result, minus the worker process's own time.

Node 0 publishes a demo MLP, nodes 2 and 3 serve it, node 1 submits `--jobs` inference jobs
one after another (16 x 16 inputs). For each: end-to-end time from `job_submit` to the
result committed on the ledger (status `completed`, as the submitter's node sees it),
the worker process's wall time as the worker node reports it (`job_status` on the assignee:
python start, torch import, model load, inference), and the difference: the market's
overhead (submit commit, assignment, model and input fetch, output store, result commit,
the submitter seeing the block).

Run: `.venv/bin/python benchmarks/bench_jobs_network.py [--jobs 10]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_common import percentile, report

from consensus.genesis import UNITS_PER_FTNS, Params
from prsm_node.devnet import Devnet, devnet_init, wait_for
from prsm_node.jobs.demo import train_demo
from prsm_node.jobs.tensors import to_safetensors

PARAMS = replace(Params(), fee_min=0, worker_stake_min=UNITS_PER_FTNS,
                 job_assign_timeout_ms=60_000, challenge_window_ms=2_000)


def run(jobs: int) -> dict[str, object]:
    import torch

    with (
        tempfile.TemporaryDirectory(prefix="prsm-bench-", dir="/tmp") as directory,
        Devnet(devnet_init(Path(directory) / "net", 4, params=PARAMS)) as devnet,
    ):
        devnet.start_all()
        for index in range(4):
            devnet.wait_ready(index, deadline_s=90)
        demo = train_demo("mlp", steps=100)
        weights = Path(directory) / "mlp.safetensors"
        weights.write_bytes(to_safetensors(demo.model.state_dict()))
        with devnet.client(0, timeout_s=120) as client:
            cid = client.call("model_publish", {"path": str(weights), "architecture": "mlp",
                                                "config": dict(demo.config)})["cid"]
        for worker in (2, 3):
            with devnet.client(worker, timeout_s=120) as client:
                client.call("worker_register", {"models": [cid], "stake": "5"})
        keys = [devnet.call(i, "wallet_address")["address"] for i in range(4)]
        inputs = Path(directory) / "input.safetensors"
        totals, walls, overheads = [], [], []
        for number in range(jobs):
            batch = torch.randn(16, 16, generator=torch.Generator().manual_seed(number))
            inputs.write_bytes(to_safetensors({"input": batch}))
            began = time.perf_counter()
            with devnet.client(1, timeout_s=90) as client:
                job_id = client.call("job_submit", {"model": cid, "kind": "inference",
                                                    "input": str(inputs)})["job_id"]
            status = wait_for(lambda job=job_id: _done(devnet, job), 120, f"job {number}")
            total = time.perf_counter() - began
            worker = keys.index(status["assignee"])
            local = devnet.call(worker, "job_status", {"job_id": job_id})["local"]
            totals.append(total * 1000)
            walls.append(local["wall_seconds"] * 1000)
            overheads.append(total * 1000 - local["wall_seconds"] * 1000)
        return {
            "jobs": jobs,
            "end_to_end_ms_p50": round(percentile(totals, 0.5)),
            "end_to_end_ms_max": round(max(totals)),
            "worker_process_ms_p50": round(percentile(walls, 0.5)),
            "overhead_ms_p50": round(percentile(overheads, 0.5)),
            "overhead_ms_max": round(max(overheads)),
        }


def _done(devnet: Devnet, job_id: str) -> dict | None:
    status = devnet.call(1, "job_status", {"job_id": job_id})
    return status if status["status"] in ("completed", "accepted", "failed", "refunded") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    arguments = parser.parse_args()
    report(run(arguments.jobs), arguments.out)


if __name__ == "__main__":
    main()
