"""A job past its limits, on a real worker node: the job is killed and reported as failed,
naming the limit, and the node stays healthy: it answers control calls and runs the next
job to completion. Meanwhile the submitter's node shows the worker's progress
(/prsm/job-progress/1.0.0).

Two nodes, the cheapest devnet that runs a job: the ledger never assigns a job to its own
submitter, so node 0 (the one validator) submits and node 1 (a follower, the only
registered worker) computes, under a tight ``[jobs] cpu_seconds``. One devnet per module:
its start-up is most of the cost; each test waits for its own jobs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from consensus.genesis import UNITS_PER_FTNS, Params
from prsm_node.config import load_config, render_toml
from prsm_node.devnet import Devnet, devnet_init, wait_for
from prsm_node.jobs.demo import demo_task, train_demo
from prsm_node.jobs.sandbox import probe
from prsm_node.jobs.spec import STEPS_MAX
from prsm_node.jobs.tensors import to_safetensors

from .conftest import TEST_NETWORK, run_cli

pytestmark = pytest.mark.multiprocess

SUBMITTER, WORKER = 0, 1
PARAMS = replace(Params(), fee_min=0, worker_stake_min=UNITS_PER_FTNS,
                 job_assign_timeout_ms=90_000, challenge_window_ms=60_000)
"""Free transactions; the worker has 90 s to post (a loaded machine); a result stays
``completed`` for the window, which is what the tests wait for."""
CPU_SECONDS = 8
"""Enough for a worker to import torch and run a small inference (~3 CPU seconds on this
machine), far from enough for a distillation of ``STEPS_MAX`` steps."""
JOB_WAIT_S = 120
ENDED = {"failed", "completed", "accepted", "refunded"}


@dataclass(frozen=True, slots=True)
class Pair:
    devnet: Devnet
    directory: Path
    model: str  # an MLP's CID, served by the worker
    dataset: str  # a distillation dataset file
    worker_pid: int


def _limit_worker(devnet: Devnet) -> None:
    config_file = devnet.nodes[WORKER].data_dir / "node.toml"
    config = load_config(config_file)
    jobs = replace(config.jobs, cpu_seconds=CPU_SECONDS, max_concurrent=1)
    config_file.write_text(render_toml(replace(config, jobs=jobs)), encoding="utf-8")


def _cli(devnet: Devnet, index: int, *args: str, json_output: bool = True) -> dict | str:
    flags = ["--json"] if json_output else []
    done = run_cli(*args, "--data-dir", str(devnet.nodes[index].data_dir), *flags,
                   timeout_s=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if json_output else done.stdout


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    directory = Path(tempfile.mkdtemp(prefix="prsm-", dir="/tmp"))
    devnet = Devnet(devnet_init(directory / "net", 2, TEST_NETWORK, validators=1,
                                params=PARAMS))
    try:
        _limit_worker(devnet)
        devnet.start_all()
        for index in (SUBMITTER, WORKER):
            devnet.wait_ready(index, deadline_s=60)
        demo = train_demo("mlp", steps=50)
        weights = directory / "mlp.safetensors"
        weights.write_bytes(to_safetensors(demo.model.state_dict()))
        model = _cli(devnet, SUBMITTER, "model", "publish", str(weights), "--architecture",
                     "mlp", "--config", json.dumps(dict(demo.config)), "--price", "1")["cid"]
        _cli(devnet, WORKER, "worker", "register", model, "--stake", "5")
        inputs, labels = demo_task("mlp", seed=0, samples=256)
        dataset = directory / "dataset.safetensors"
        dataset.write_bytes(to_safetensors({"input": inputs, "labels": labels}))
        yield Pair(devnet=devnet, directory=directory, model=model, dataset=str(dataset),
                   worker_pid=devnet.call(WORKER, "node_info")["pid"])
    finally:
        devnet.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


def _status(pair: Pair, job_id: str) -> dict:
    return pair.devnet.call(SUBMITTER, "job_status", {"job_id": job_id})


def _wait_status(pair: Pair, job_id: str, wanted: set[str]) -> dict:
    def reached() -> dict | None:
        status = _status(pair, job_id)
        return status if status["status"] in wanted else None

    return wait_for(reached, JOB_WAIT_S, f"job {job_id[:12]} reaching {sorted(wanted)}")


def _submit_endless_distill(pair: Pair) -> str:
    return pair.devnet.call(SUBMITTER, "job_submit", {
        "model": pair.model, "kind": "distill", "input": pair.dataset, "deadline_s": 300,
        "params": {"student": {"architecture": "mlp", "config": {"hidden": [8]}},
                   "steps": STEPS_MAX, "progress_every": 200}})["job_id"]


def test_the_submitter_sees_the_workers_progress_and_its_failure_reason(pair: Pair) -> None:
    job_id = _submit_endless_distill(pair)

    def training() -> dict | None:
        status = _status(pair, job_id)
        worker = status["worker"] or {}
        return status if worker.get("progress", {}).get("step", 0) > 0 else None

    seen = wait_for(training, JOB_WAIT_S, "the worker's first training steps")
    assert seen["local"] is None and seen["status"] == "running", seen
    worker = seen["worker"]
    assert worker["state"] == "running" and worker["progress"]["steps"] == STEPS_MAX, worker
    assert set(worker["progress"]) <= {"phase", "step", "steps", "loss", "device"}
    shown = _cli(pair.devnet, SUBMITTER, "job", "status", job_id, json_output=False)
    assert "worker    state=" in shown and "step=" in shown, shown
    assert _wait_status(pair, job_id, ENDED)["status"] == "failed"  # the CPU limit, below
    assert pair.devnet.call(SUBMITTER, "node_statistics")["jobs"]["progress"]["asked"] >= 1


def test_a_job_past_its_cpu_limit_fails_and_the_worker_node_stays_healthy(pair: Pair) -> None:
    devnet = pair.devnet
    failed_before = devnet.call(WORKER, "node_statistics")["jobs"]["failed"]
    endless = _submit_endless_distill(pair)
    failed = _wait_status(pair, endless, ENDED)
    assert (failed["status"], failed["outcome"]) == ("failed", "no_worker_left"), failed
    local = devnet.call(WORKER, "job_status", {"job_id": endless})["local"]
    assert local["state"] == "failed", local
    assert "job exceeded its cpu limit" in local["error"], local

    assert devnet.call(WORKER, "node_info")["pid"] == pair.worker_pid  # the same process
    jobs = devnet.call(WORKER, "node_statistics")["jobs"]
    assert jobs["failed"] == failed_before + 1, jobs
    assert jobs["sandbox"]["active"] == (probe() is None), jobs  # the node says which
    batch = pair.directory / "batch.safetensors"
    batch.write_bytes(to_safetensors({"input": torch.zeros(4, 16)}))
    normal = devnet.call(SUBMITTER, "job_submit", {
        "model": pair.model, "kind": "inference", "input": str(batch),
        "deadline_s": 300})["job_id"]
    done = _wait_status(pair, normal, ENDED)
    assert done["status"] in {"completed", "accepted"}, done
    wait_for(lambda: devnet.call(WORKER, "job_status", {"job_id": normal})["local"]["state"]
             == "posted", 30, "the worker to see its result committed")
    assert devnet.exited() == {}
