"""A job past its limits, on a real worker node: the job is killed and reported as failed,
naming the limit, and the node stays healthy: it answers control calls and runs the next
job to completion.

Two nodes, the cheapest devnet that runs a job: the ledger never assigns a job to its own
submitter, so node 0 (the one validator) submits and node 1 (a follower, the only
registered worker) computes, under a tight ``[jobs] cpu_seconds``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from consensus.genesis import UNITS_PER_FTNS, Params
from prsm_node.config import load_config, render_toml
from prsm_node.devnet import Devnet, wait_for
from prsm_node.jobs.demo import demo_task, train_demo
from prsm_node.jobs.sandbox import probe
from prsm_node.jobs.spec import STEPS_MAX
from prsm_node.jobs.tensors import to_safetensors

from .conftest import run_cli

pytestmark = pytest.mark.multiprocess

SUBMITTER, WORKER = 0, 1
PARAMS = replace(Params(), fee_min=0, worker_stake_min=UNITS_PER_FTNS,
                 job_assign_timeout_ms=90_000, challenge_window_ms=60_000)
"""Free transactions; the worker has 90 s to post (a loaded machine); a result stays
``completed`` for the window, which is what the test waits for."""
CPU_SECONDS = 8
"""Enough for a worker to import torch and run a small inference (~3 CPU seconds on this
machine), far from enough for a distillation of ``STEPS_MAX`` steps."""
JOB_WAIT_S = 120


def _limit_worker(devnet: Devnet) -> None:
    config_file = devnet.nodes[WORKER].data_dir / "node.toml"
    config = load_config(config_file)
    jobs = replace(config.jobs, cpu_seconds=CPU_SECONDS, max_concurrent=1)
    config_file.write_text(render_toml(replace(config, jobs=jobs)), encoding="utf-8")


def _cli(devnet: Devnet, index: int, *args: str) -> dict:
    done = run_cli(*args, "--data-dir", str(devnet.nodes[index].data_dir), "--json",
                   timeout_s=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_status(devnet: Devnet, job_id: str, wanted: set[str]) -> dict:
    def reached() -> dict | None:
        status = devnet.call(SUBMITTER, "job_status", {"job_id": job_id})
        return status if status["status"] in wanted else None

    return wait_for(reached, JOB_WAIT_S, f"job {job_id[:12]} reaching {sorted(wanted)}")


def test_a_job_past_its_cpu_limit_fails_and_the_worker_node_stays_healthy(
        make_devnet: Callable[..., Devnet], short_dir: Path) -> None:
    devnet = make_devnet(2, validators=1, params=PARAMS, start=False)
    _limit_worker(devnet)
    devnet.start_all()
    for index in (SUBMITTER, WORKER):
        devnet.wait_ready(index, deadline_s=60)
    worker_pid = devnet.call(WORKER, "node_info")["pid"]

    demo = train_demo("mlp", steps=50)
    weights = short_dir / "mlp.safetensors"
    weights.write_bytes(to_safetensors(demo.model.state_dict()))
    model = _cli(devnet, SUBMITTER, "model", "publish", str(weights), "--architecture", "mlp",
                 "--config", json.dumps(dict(demo.config)), "--price", "1")["cid"]
    _cli(devnet, WORKER, "worker", "register", model, "--stake", "5")

    inputs, labels = demo_task("mlp", seed=0, samples=256)
    dataset = short_dir / "dataset.safetensors"
    dataset.write_bytes(to_safetensors({"input": inputs, "labels": labels}))
    endless = devnet.call(SUBMITTER, "job_submit", {
        "model": model, "kind": "distill", "input": str(dataset), "deadline_s": 300,
        "params": {"student": {"architecture": "mlp", "config": {"hidden": [8]}},
                   "steps": STEPS_MAX, "progress_every": 1000}})["job_id"]
    failed = _wait_status(devnet, endless, {"failed", "completed", "accepted", "refunded"})
    assert (failed["status"], failed["outcome"]) == ("failed", "no_worker_left"), failed
    local = devnet.call(WORKER, "job_status", {"job_id": endless})["local"]
    assert local["state"] == "failed", local
    assert f"cpu limit: more than {CPU_SECONDS} CPU seconds" in local["error"], local

    assert devnet.call(WORKER, "node_info")["pid"] == worker_pid  # the same process
    jobs = devnet.call(WORKER, "node_statistics")["jobs"]
    assert jobs["failed"] == 1, jobs
    assert jobs["sandbox"]["active"] == (probe() is None), jobs  # the node says which
    batch = short_dir / "batch.safetensors"
    batch.write_bytes(to_safetensors({"input": torch.zeros(4, 16)}))
    normal = devnet.call(SUBMITTER, "job_submit", {
        "model": model, "kind": "inference", "input": str(batch), "deadline_s": 300})["job_id"]
    done = _wait_status(devnet, normal, {"failed", "completed", "accepted", "refunded"})
    assert done["status"] in {"completed", "accepted"}, done
    assert devnet.call(WORKER, "job_status", {"job_id": normal})["local"]["state"] == "posted"
    assert devnet.exited() == {}
