"""Per-task step timing (opt-in, ``log.count_task_steps``): which task names run most and
which single steps held the loop.

The always-on check is the heartbeat in ``loop_monitor.py``, which costs nothing per step
and names the code that held the loop. This trio instrument answers the next questions:
how many steps each task takes (what keeps an idle node busy) and which task's single
step was slow.

Rules:
1. A step is timed twice: wall clock (what the other tasks waited) and this thread's CPU
   time. Wall far above CPU means the OS preempted the node, not that the task computed.
2. Bounded: slow steps are kept per task name in ``SlowRecords`` (at most
   ``LOCATIONS_MAX`` names, logged at most once a second each); steps are counted per
   task name up to ``STEP_NAMES_MAX`` names, then under ``OTHER``.
3. Cost: two Python calls and a thread-CPU clock read per task step. Measured on the ledger
   benchmark at saturation (tens of thousands of steps per second per node): 90-150 us of
   CPU per committed transaction across 4 nodes, 6-10% of the total. Hence opt-in.
"""

from __future__ import annotations

import time

import trio

from prsm_node.loop_monitor import SlowRecords

STEP_NAMES_MAX = 256
"""Task names whose steps are counted (names are code locations, so a few dozen in
practice); further names count under ``OTHER``."""
OTHER = "(other)"


class SlowStepMonitor(trio.abc.Instrument):
    """Counts task steps per name and records those longer than ``threshold_ms``."""

    def __init__(self, threshold_ms: int) -> None:
        assert threshold_ms > 0, "a zero threshold means no monitor, not one that logs all"
        self.threshold_s = threshold_ms / 1000
        self.steps = 0
        self.slow = SlowRecords("node.slow_task_step", "task")
        self.steps_by_name: dict[str, int] = {}
        # Installed from inside a task step: that step's start is unknown, so it is skipped.
        self._wall = float("inf")
        self._cpu = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        counts = self.steps_by_name
        name = task.name
        if name in counts:
            counts[name] += 1
        elif len(counts) < STEP_NAMES_MAX:
            counts[name] = 1
        else:
            counts[OTHER] = counts.get(OTHER, 0) + 1
        wall = time.perf_counter() - self._wall
        if wall >= self.threshold_s:
            self.slow.record(name, wall, time.thread_time() - self._cpu)

    def statistics(self) -> dict[str, object]:
        """For node_statistics: totals, the busiest names and the slowest names first."""
        return {
            "steps": self.steps,
            "slow_steps": self.slow.count,
            "busiest_tasks": [
                {"task": name, "steps": count}
                for name, count in sorted(self.steps_by_name.items(), key=lambda i: -i[1])[:16]
            ],
            "slow_by_task": self.slow.worst(),
        }
