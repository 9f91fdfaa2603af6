"""Limits, failures, cancellation and the queue: the runner reports and keeps serving.

The jobs here are real ones made too big for their limits (a distillation recipe asking
for gigabytes of inputs, a distillation of ten million steps), not a test-only job kind.
"""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest
import torch
import trio

from prsm_node.jobs.errors import (
    JobCancelled,
    JobFailed,
    JobLimitExceeded,
    JobRefused,
    JobSpecError,
)
from prsm_node.jobs.process import JobLimits, JobRequest
from prsm_node.jobs.runner import JobRunner, JobState
from prsm_node.jobs.spec import STEPS_MAX
from prsm_node.jobs.tensors import to_safetensors
from prsm_node.jobs.worker import ADDRESS_SPACE_SLACK_BYTES
from tests.jobs.helpers import published

pytestmark = pytest.mark.multiprocess

STUDENT = {"architecture": "mlp", "config": {"hidden": [8]}}
ROOMY = JobLimits(cpu_seconds=120, memory_mb=512, wall_seconds=120, threads=1)


def _distill(*, samples: int = 1024, steps: int = STEPS_MAX,
             limits: JobLimits = ROOMY) -> JobRequest:
    return JobRequest(kind="distill", models={"teacher": published("mlp").files()}, inputs={},
                      params={"student": STUDENT, "steps": steps, "progress_every": 10,
                              "recipe": {"kind": "gaussian", "samples": samples, "seed": 0}},
                      limits=limits)


def _inference(batch: torch.Tensor | None = None) -> JobRequest:
    batch = torch.zeros(3, 16) if batch is None else batch
    return JobRequest(kind="inference", models={"model": published("mlp").files()},
                      inputs={"input.safetensors": to_safetensors({"input": batch})},
                      params={})


async def _still_serves(runner: JobRunner) -> None:
    result = await runner.execute(_inference())
    assert len(result.outputs["output.safetensors"]) > 0


async def test_an_allocation_past_the_memory_limit_fails_the_job_and_the_next_runs(
        start_runner) -> None:
    runner = await start_runner(max_concurrent=1)
    # 2^25 samples of 16 float32 inputs: 2 GiB, past RLIMIT_AS (512 MiB + 1 GiB slack).
    with pytest.raises(JobLimitExceeded) as caught:
        await runner.execute(_distill(samples=1 << 25, steps=1))
    assert caught.value.limit == "memory" and "allocation failed" in caught.value.detail
    await _still_serves(runner)
    statistics = runner.statistics()
    assert (statistics.failed, statistics.limit_exceeded, statistics.completed) == (1, 1, 1)


async def test_resident_memory_past_the_limit_kills_the_worker(start_runner) -> None:
    runner = await start_runner()
    # 2^23 samples: 512 MiB, within the address space but past 512 MiB resident with torch.
    with pytest.raises(JobLimitExceeded) as caught:
        await runner.execute(_distill(samples=1 << 23, steps=1))
    assert caught.value.limit == "memory" and "resident" in caught.value.detail


@pytest.mark.parametrize(("limit", "limits"), [
    ("cpu", JobLimits(cpu_seconds=3, memory_mb=1024, wall_seconds=120, threads=1)),
    ("wall", JobLimits(cpu_seconds=120, memory_mb=1024, wall_seconds=1.5, threads=1)),
])
async def test_a_job_past_its_cpu_or_wall_time_is_killed(start_runner, limit: str,
                                                        limits: JobLimits) -> None:
    runner = await start_runner()
    with pytest.raises(JobLimitExceeded) as caught:
        await runner.execute(_distill(limits=limits))  # ten million steps
    assert caught.value.limit == limit
    assert runner.statistics().limit_exceeded == 1


async def test_a_worker_error_is_reported_as_a_typed_failure(start_runner) -> None:
    runner = await start_runner()
    with pytest.raises(JobFailed) as caught:
        await runner.execute(_inference(torch.zeros(3, 15)))  # the MLP takes 16 features
    assert caught.value.error_type == "JobSpecError"
    assert "inputs.input" in caught.value.message
    assert "Traceback" not in caught.value.message


async def test_a_running_worker_is_confined_and_cancelling_it_kills_it(
        start_runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRSM_HOME", str(tmp_path / "node"))
    runner = await start_runner()
    job_id = runner.submit(_distill())
    with trio.fail_after(120):  # poll the status until the worker reports training steps
        while "step" not in runner.status(job_id).progress:
            await trio.sleep(0.05)
    pid = runner.status(job_id).progress["pid"]
    worker = psutil.Process(pid)
    work = Path(worker.cwd())
    assert work.parent == tmp_path and stat.S_IMODE(work.stat().st_mode) == 0o700
    assert "PRSM_HOME" not in worker.environ() and worker.environ()["HOME"] == str(work)
    memory_bytes = ROOMY.memory_mb * 1024 * 1024
    assert worker.rlimit(psutil.RLIMIT_AS)[0] == memory_bytes + ADDRESS_SPACE_SLACK_BYTES
    assert worker.rlimit(psutil.RLIMIT_CPU)[0] == ROOMY.cpu_seconds
    assert worker.rlimit(psutil.RLIMIT_CORE) == (0, 0)
    assert runner.cancel(job_id)
    with pytest.raises(JobCancelled):
        await runner.wait(job_id)
    assert runner.status(job_id).state is JobState.CANCELLED
    assert not psutil.pid_exists(pid)
    assert not runner.cancel(job_id)


async def test_the_queue_is_bounded_and_refuses_what_it_cannot_run(start_runner) -> None:
    runner = await start_runner(max_concurrent=1, queue_max=1, kinds=("inference",))
    first = runner.submit(_inference())  # no checkpoint yet: it is still in the queue
    with pytest.raises(JobRefused, match="queue is full"):
        runner.submit(_inference())
    with pytest.raises(JobRefused, match="does not run distill"):
        runner.submit(_distill())
    assert runner.cancel(first) and runner.status(first).state is JobState.CANCELLED
    with pytest.raises(JobSpecError, match="inputs"):
        runner.submit(JobRequest(kind="inference", models=_inference().models, inputs={},
                                 params={}))
    assert runner.statistics().cancelled == 1
