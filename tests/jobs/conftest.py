"""A job runner per test, started in the test's nursery; work dirs under a temp dir that
each test can check is empty afterwards (no work dir outlives its job)."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import trio

with warnings.catch_warnings():
    # The CPU torch wheel comes without numpy, and says so once, at import.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from prsm_node.config import JobsSection
from prsm_node.jobs.runner import JobRunner

TEST_JOBS = JobsSection(max_concurrent=2, queue_max=8, cpu_seconds=120, memory_mb=1024,
                        wall_seconds=120, threads=1, device="cpu")


@pytest.fixture
async def start_runner(nursery: trio.Nursery, tmp_path: Path
                       ) -> AsyncIterator[Callable[..., JobRunner]]:
    runners: list[JobRunner] = []

    async def start(**changes: object) -> JobRunner:
        runner = JobRunner(replace(TEST_JOBS, **changes), work_root=tmp_path)
        await nursery.start(runner.run)
        runners.append(runner)
        return runner

    yield start
    assert list(tmp_path.iterdir()) == [], "a job's work dir was left behind"
