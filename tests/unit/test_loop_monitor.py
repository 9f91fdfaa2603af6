"""The slow-step monitor names the task that held the loop and tells computing from waiting."""

from __future__ import annotations

import time

import trio

from prsm_node.loop_monitor import NAMES_MAX, SlowStepMonitor


def _compute(seconds: float) -> None:
    """Burn this thread's CPU for `seconds` (CPU time, so machine load cannot shorten it)."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


async def computes() -> None:
    _compute(0.15)


async def blocks() -> None:
    time.sleep(0.15)  # a blocking call inside a task: the loop waits, no CPU is used


async def behaves() -> None:
    for _ in range(20):
        await trio.sleep(0)


def run_with_monitor(*tasks) -> SlowStepMonitor:
    monitor = SlowStepMonitor(threshold_ms=100)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)

    trio.run(main, instruments=[monitor])
    return monitor


def test_a_computing_task_is_named_with_its_cpu_time() -> None:
    monitor = run_with_monitor(computes, behaves)
    stats = monitor.statistics()
    assert stats["slow_steps"] == 1
    (entry,) = stats["slow_by_task"]
    assert entry["task"].endswith("computes")
    assert entry["cpu_ms_max"] >= 150
    assert entry["wall_ms_max"] >= entry["cpu_ms_max"] - 1


def test_a_blocking_task_shows_wall_time_without_cpu() -> None:
    monitor = run_with_monitor(blocks)
    (entry,) = monitor.statistics()["slow_by_task"]
    assert entry["task"].endswith("blocks")
    assert entry["wall_ms_max"] >= 150
    assert entry["cpu_ms_max"] < 50


def test_well_behaved_tasks_are_counted_but_not_recorded() -> None:
    monitor = run_with_monitor(behaves, behaves)
    assert monitor.steps > 40
    assert monitor.statistics()["slow_steps"] == 0


def test_the_names_tracked_are_bounded() -> None:
    monitor = SlowStepMonitor(threshold_ms=1)
    for number in range(NAMES_MAX + 10):
        monitor._record(f"task-{number}", wall_s=0.002, cpu_s=0.001)
    assert len(monitor.by_name) == NAMES_MAX
    assert "task-0" not in monitor.by_name
    assert monitor.slow == NAMES_MAX + 10


def test_installed_from_inside_a_step_the_partial_step_is_skipped() -> None:
    """run_node installs the monitor from its own task step, whose start it never saw."""
    monitor = SlowStepMonitor(threshold_ms=100)

    async def main() -> None:
        trio.lowlevel.add_instrument(monitor)
        await behaves()

    trio.run(main)
    assert monitor.steps > 0
    assert monitor.statistics()["slow_steps"] == 0


def test_steps_are_counted_per_task_name() -> None:
    monitor = run_with_monitor(behaves, behaves)
    busiest = monitor.statistics()["busiest_tasks"]
    assert busiest[0]["task"].endswith("behaves") and busiest[0]["steps"] >= 40


def test_collector_pauses_are_timed_per_generation() -> None:
    import gc

    monitor = SlowStepMonitor(threshold_ms=100)
    monitor.watch_gc()
    try:
        garbage = [[index] for index in range(50_000)]
        del garbage
        gc.collect()
    finally:
        monitor.unwatch_gc()
    stats = monitor.statistics()
    assert stats["gc_collections"][2] >= 1
    assert stats["gc_pause_ms_max"] > 0
    gc.collect()  # after unwatch: no longer counted
    assert monitor.statistics()["gc_collections"] == stats["gc_collections"]
