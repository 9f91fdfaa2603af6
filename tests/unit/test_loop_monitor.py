"""The loop monitor sees stalls, names the code that held the loop, and tells computing
from waiting; the opt-in step instrument names the task."""

from __future__ import annotations

import gc
import time

import trio

from prsm_node.loop_monitor import LOCATIONS_MAX, LoopMonitor, SlowRecords
from prsm_node.task_steps import SlowStepMonitor


def _compute(seconds: float) -> None:
    """Burn this thread's CPU for `seconds` (CPU time, so machine load cannot shorten it)."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


async def computes() -> None:
    _compute(0.4)


async def blocks() -> None:
    time.sleep(0.4)  # a blocking call inside a task: the loop waits, no CPU is used


async def behaves() -> None:
    for _ in range(20):
        await trio.sleep(0.01)


def run_monitored(
    *tasks, task_steps: SlowStepMonitor | None = None, threshold_ms: int = 100
) -> LoopMonitor:
    """Run `tasks` beside a monitor whose heartbeat has started."""
    monitor = LoopMonitor(threshold_ms=threshold_ms, task_steps=task_steps)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            await trio.sleep(monitor.tick_s * 2)  # a heartbeat before the tasks start
            async with trio.open_nursery() as work:
                for task in tasks:
                    work.start_soon(task)
            await trio.sleep(monitor.tick_s * 2)  # the heartbeat after the last stall
            nursery.cancel_scope.cancel()

    trio.run(main, instruments=[task_steps] if task_steps is not None else [])
    return monitor


def test_a_computing_task_is_a_stall_named_by_its_code_with_its_cpu_time() -> None:
    monitor = run_monitored(computes, behaves)
    stats = monitor.statistics()
    assert stats["stalls"] == 1
    (entry,) = stats["stalls_by_location"]
    assert "_compute" in entry["where"]
    assert entry["cpu_ms_max"] >= 300
    assert entry["wall_ms_max"] >= 300


def test_a_blocking_call_shows_lag_without_cpu() -> None:
    monitor = run_monitored(blocks)
    (entry,) = monitor.statistics()["stalls_by_location"]
    assert "blocks" in entry["where"]
    assert entry["wall_ms_max"] >= 300
    assert entry["cpu_ms_max"] < 100


def test_well_behaved_tasks_cause_no_stall() -> None:
    # A loaded CI machine can preempt the test process for a while: a generous threshold.
    monitor = run_monitored(behaves, behaves, threshold_ms=1000)
    stats = monitor.statistics()
    assert stats["heartbeats"] >= 3
    assert stats["stalls"] == 0


def test_the_locations_kept_are_bounded() -> None:
    records = SlowRecords("test.slow", "where")
    for number in range(LOCATIONS_MAX + 10):
        records.record(f"place-{number}", wall_s=0.002, cpu_s=0.001)
    assert len(records.by_key) == LOCATIONS_MAX
    assert "place-0" not in records.by_key
    assert records.count == LOCATIONS_MAX + 10


def test_the_step_instrument_names_the_task_and_counts_steps() -> None:
    steps = SlowStepMonitor(threshold_ms=100)
    monitor = run_monitored(computes, behaves, task_steps=steps)
    figures = monitor.statistics()["task_steps"]
    (slow,) = figures["slow_by_task"]
    assert slow["task"].endswith("computes") and slow["cpu_ms_max"] >= 300
    busiest = {entry["task"].rsplit(".", 1)[-1]: entry["steps"]
               for entry in figures["busiest_tasks"]}
    assert busiest["behaves"] >= 20


def test_the_step_instrument_skips_the_step_it_was_installed_in() -> None:
    """Installed from inside a task step, whose start it never saw."""
    steps = SlowStepMonitor(threshold_ms=100)

    async def main() -> None:
        trio.lowlevel.add_instrument(steps)
        await behaves()

    trio.run(main)
    assert steps.steps > 0
    assert steps.statistics()["slow_steps"] == 0


def test_collector_pauses_are_timed_per_generation() -> None:
    monitor = LoopMonitor(threshold_ms=100)
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
