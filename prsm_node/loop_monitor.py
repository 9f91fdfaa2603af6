"""Event-loop lag: when the node's trio loop fell behind, for how long, and what code held it.

Every network delay, control-call time-out and PBFT view change in a trio node starts as
the loop not getting round to a task in time: one task ran too long between checkpoints,
the collector paused everything, or the OS did not schedule the process. This monitor
sees all three at a cost independent of the load (the per-step instrument it replaced
cost 6-10% of a saturated node's CPU; it is still there, opt-in, in ``task_steps.py``).

Rules:
1. A heartbeat task sleeps ``tick`` and measures how late it wakes: the loop's lag (what
   any ready task waited). A lag over ``threshold`` is a stall. The heartbeat also reads
   the loop thread's CPU time over the late interval: CPU near the lag means code
   computed; CPU far below it means the loop was blocked in a call or the OS preempted
   the node (an overloaded machine), so nobody chases the wrong cause.
2. A watchdog thread looks every ``tick / 2``: when the heartbeat is overdue by more than
   ``threshold`` it takes the loop thread's stack (``sys._current_frames``), so a stall
   is recorded under the code that was running, not under "somewhere". A stall that ends
   before the watchdog looks is recorded under ``UNSEEN``.
3. The collector's pauses are timed per generation (gc callbacks): a full collection of a
   big heap stops every task.
4. Bounded: at most ``LOCATIONS_MAX`` locations are kept (the least recent forgotten), and
   one location is logged at most once per ``LOG_INTERVAL_S`` (its count still grows).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import structlog
import trio

if TYPE_CHECKING:
    from prsm_node.task_steps import SlowStepMonitor

log = structlog.get_logger(__name__)

LOCATIONS_MAX = 64
LOG_INTERVAL_S = 1.0
UNSEEN = "(ended before the watchdog looked)"
OUR_PACKAGES = ("prsm_node", "consensus", "dht", "storage")
"""A stack is summarised by its innermost frame and the innermost frame of our own code."""


@dataclass(slots=True)
class Stalls:
    """Stalls seen at one location."""

    count: int = 0
    wall_ms_max: float = 0.0
    cpu_ms_max: float = 0.0
    logged_at: float = float("-inf")


class SlowRecords:
    """Slow events by key (a code location or a task name), bounded, logged at most once a
    second per key."""

    def __init__(self, event: str, key_name: str) -> None:
        self.event = event
        self.key_name = key_name
        self.count = 0
        self.by_key: OrderedDict[str, Stalls] = OrderedDict()

    def record(self, key: str, wall_s: float, cpu_s: float) -> None:
        self.count += 1
        entry = self.by_key.get(key)
        if entry is None:
            entry = self.by_key[key] = Stalls()
            if len(self.by_key) > LOCATIONS_MAX:
                self.by_key.popitem(last=False)
        else:
            self.by_key.move_to_end(key)
        entry.count += 1
        entry.wall_ms_max = max(entry.wall_ms_max, wall_s * 1000)
        entry.cpu_ms_max = max(entry.cpu_ms_max, cpu_s * 1000)
        now = time.monotonic()
        if now - entry.logged_at >= LOG_INTERVAL_S:
            entry.logged_at = now
            log.warning(self.event, **{self.key_name: key}, wall_ms=round(wall_s * 1000, 1),
                        cpu_ms=round(cpu_s * 1000, 1), count=entry.count)

    def worst(self, limit: int = 16) -> list[dict[str, object]]:
        ordered = sorted(self.by_key.items(), key=lambda item: -item[1].wall_ms_max)
        return [
            {self.key_name: key, "count": entry.count, "wall_ms_max": round(entry.wall_ms_max, 1),
             "cpu_ms_max": round(entry.cpu_ms_max, 1)}
            for key, entry in ordered[:limit]
        ]


class GcPauses:
    """The collector's pauses per generation (0, 1, 2)."""

    def __init__(self) -> None:
        self._started = 0.0
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.pause_max_s = 0.0

    def watch(self) -> None:
        gc.callbacks.append(self._on_gc)

    def unwatch(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        generation = info.get("generation", 0)
        self.collections[generation] += 1
        self.seconds[generation] += elapsed
        self.pause_max_s = max(self.pause_max_s, elapsed)


def where(frame: FrameType | None) -> str:
    """``innermost file:line function``, plus ``< ours`` when the innermost frame is not
    our code (a library or the stdlib) and one of ours is further out."""
    if frame is None:
        return UNSEEN
    innermost = _frame_name(frame)
    outer: FrameType | None = frame
    while outer is not None:
        if _is_ours(outer):
            name = _frame_name(outer)
            return innermost if name == innermost else f"{innermost} < {name}"
        outer = outer.f_back
    return innermost


def _is_ours(frame: FrameType) -> bool:
    return any(part in OUR_PACKAGES for part in frame.f_code.co_filename.split("/")[-4:-1])


def _frame_name(frame: FrameType) -> str:
    path = frame.f_code.co_filename.split("/")
    return f"{'/'.join(path[-2:])}:{frame.f_lineno} {frame.f_code.co_name}"


class LoopMonitor:
    """Heartbeat, watchdog and collector timing for one trio loop (see the module rules)."""

    def __init__(self, threshold_ms: int, task_steps: SlowStepMonitor | None = None) -> None:
        assert threshold_ms > 0, "a zero threshold means no monitor, not one that logs all"
        self.threshold_s = threshold_ms / 1000
        self.tick_s = min(0.1, self.threshold_s / 2)
        self.task_steps = task_steps
        self.stalls = SlowRecords("node.event_loop_stalled", "where")
        self.gc = GcPauses()
        self.lag_max_s = 0.0
        self.beats = 0
        self._beat_at = float("inf")  # perf_counter of the heartbeat's last wake
        self._seen_for = 0.0  # the _beat_at whose stall the watchdog already sampled
        self._seen_where = UNSEEN

    async def run(self) -> None:
        """The heartbeat; runs until cancelled, with the watchdog thread beside it."""
        loop_thread = threading.get_ident()
        stop = threading.Event()
        watchdog = threading.Thread(
            target=self._watch, args=(loop_thread, stop), name="loop-watchdog", daemon=True
        )
        self._beat_at = time.perf_counter()
        watchdog.start()
        try:
            while True:
                cpu_before = time.thread_time()
                due = time.perf_counter() + self.tick_s
                await trio.sleep(self.tick_s)
                woke = time.perf_counter()
                lag = woke - due
                self.beats += 1
                self.lag_max_s = max(self.lag_max_s, lag)
                if lag >= self.threshold_s:
                    seen = self._seen_where if self._seen_for == self._beat_at else UNSEEN
                    self.stalls.record(seen, lag, time.thread_time() - cpu_before)
                self._beat_at = woke
        finally:
            stop.set()

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        """In its own thread: sample the loop thread's stack once per stall."""
        while not stop.wait(self.tick_s / 2):
            beat_at = self._beat_at
            overdue = time.perf_counter() - beat_at - self.tick_s
            if overdue >= self.threshold_s and self._seen_for != beat_at:
                self._seen_where = where(sys._current_frames().get(loop_thread))
                self._seen_for = beat_at

    def watch_gc(self) -> None:
        self.gc.watch()

    def unwatch_gc(self) -> None:
        self.gc.unwatch()

    def statistics(self) -> dict[str, object]:
        """For node_statistics: totals, then the worst locations first."""
        figures: dict[str, object] = {
            "threshold_ms": round(self.threshold_s * 1000),
            "heartbeats": self.beats,
            "lag_ms_max": round(self.lag_max_s * 1000, 1),
            "stalls": self.stalls.count,
            "stalls_by_location": self.stalls.worst(),
            "gc_collections": self.gc.collections,
            "gc_ms": [round(seconds * 1000, 1) for seconds in self.gc.seconds],
            "gc_pause_ms_max": round(self.gc.pause_max_s * 1000, 1),
        }
        if self.task_steps is not None:
            figures["task_steps"] = self.task_steps.statistics()
        return figures
