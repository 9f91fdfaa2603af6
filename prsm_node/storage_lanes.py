"""The node's transfer lanes: child processes that receive fetched blocks (``storage_lane``).

Rules:
1. ``storage.fetch_lanes`` lanes, started with the storage service and kept while the node
   runs: a lane costs an interpreter's start (~1 CPU s on the 2-core VM), which a fetch
   started after it never waits for. A provider sticks to one lane (its wants share that
   lane's connection and stream, so they pipeline); a new provider goes to the lane with
   the fewest providers, so the providers of one fetch spread over the cores.
2. ``request`` never raises for the network and never waits for a lane to start: it
   returns a ``WantAnswer`` (status ``failed`` when the provider did not answer), or None
   when the provider's lane cannot take the want now (starting, or it died with the want):
   the fetch then asks in-process, as without lanes.
3. Each lane has a supervisor: a lane that dies fails its outstanding wants and is started
   again after ``LANE_RESTART_S``; one that died before it said ready (it cannot start: a
   broken install, no memory) or did not say ready within ``LANE_START_S`` after
   ``LANE_RETRY_S``. Every want waits at most the request timeout plus ``LANE_SLACK_S``.
4. Files the lane staged for an answer nobody waits for any more (the fetch was cancelled,
   the want timed out) are removed here; the fetch driver removes those it does not adopt.
5. Stopping closes each lane's stdin (the lane removes its unreported files and exits),
   waits ``LANE_STOP_S``, then kills what is left. Lane errors go to the node's stderr.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from prsm_node.net.framing import FrameError, encode_frame, read_frame
from prsm_node.storage_fetch import STATUS_FAILED, STATUS_OK, StagedBlock, WantAnswer
from prsm_node.storage_lane import IDLE_CLOSE_S, LANE_MESSAGE_MAX, READY_SEQ, PipeStream
from storage.cid import Cid

log = structlog.get_logger(__name__)

LANE_START_S = 60.0
"""A lane imports libp2p before it says ready: ~1 s here, far more on a loaded 2-core VM."""
LANE_SLACK_S = 5.0
LANE_STOP_S = 5.0
LANE_RESTART_S = 1.0
LANE_RETRY_S = 60.0
LANE_PEERS_MAX = 1024
"""Providers remembered with their lane; the least recently used is forgotten past it."""


@dataclass(slots=True)
class _Lane:
    """One run of one lane's process (a restart gets a new one)."""

    number: int
    process: Any = None
    ready: bool = False
    dead: bool = False
    pending: dict[int, tuple[trio.Event, list[WantAnswer]]] = field(default_factory=dict)
    write_lock: trio.Lock = field(default_factory=trio.Lock)


class TransferLanes:
    """Start, feed and stop the lanes (module rules); ``run`` owns their tasks."""

    def __init__(self, *, count: int, temp_dir: Path, frame_size_max: int,
                 request_timeout_s: float, durable: bool,
                 idle_close_s: float = IDLE_CLOSE_S) -> None:
        assert count >= 1
        self.count = count
        self._temp_dir = temp_dir
        self._frame_size_max = frame_size_max
        self._request_timeout_s = request_timeout_s
        self._durable = durable
        self._idle_close_s = idle_close_s
        self._lanes = [_Lane(number, dead=True) for number in range(count)]
        self._providers = [0] * count  # providers assigned to each lane
        self._lane_of: OrderedDict[str, int] = OrderedDict()
        self._seq = READY_SEQ
        self._stopping = False
        self.started = self.died = self.orphans_removed = self.blocks_staged = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for number in range(self.count):
                nursery.start_soon(self._supervise, number)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._stopping = True  # the lanes end now: no deaths to report

    async def request(self, peer: str, addresses: tuple[str, ...], cid: Cid) -> WantAnswer | None:
        """Have the provider's lane fetch ``cid`` from ``peer`` (rule 2)."""
        lane = self._lanes[self._lane_number(peer)]
        if not lane.ready or lane.dead:
            return None
        self._seq += 1
        seq = self._seq
        done, slot = trio.Event(), []
        lane.pending[seq] = (done, slot)
        try:
            frame = encode_frame([seq, peer, list(addresses), cid.to_bytes()], LANE_MESSAGE_MAX)
            async with lane.write_lock:
                await lane.process.stdin.send_all(frame)
            with trio.move_on_after(self._request_timeout_s + LANE_SLACK_S):
                await done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lane_died(lane, "its stdin closed")
        finally:
            lane.pending.pop(seq, None)
        if not slot:
            return None if lane.dead else WantAnswer(STATUS_FAILED)
        self.blocks_staged += len(slot[0].staged)
        return slot[0]

    def statistics(self) -> dict[str, int]:
        return {"lanes_running": sum(1 for lane in self._lanes if lane.ready and not lane.dead),
                "lanes_started": self.started, "lanes_died": self.died,
                "lane_blocks_staged": self.blocks_staged,
                "lane_orphans_removed": self.orphans_removed}

    # -- lanes ------------------------------------------------------------------------

    def _lane_number(self, peer: str) -> int:
        number = self._lane_of.get(peer)
        if number is None:
            number = min(range(self.count), key=lambda n: (self._providers[n], n))
            self._providers[number] += 1
            self._lane_of[peer] = number
            if len(self._lane_of) > LANE_PEERS_MAX:  # forget the least recent provider
                _oldest, its_number = self._lane_of.popitem(last=False)
                self._providers[its_number] -= 1
        self._lane_of.move_to_end(peer)
        return number

    async def _supervise(self, number: int) -> None:
        """Run lane ``number`` while the node runs, starting it again when it ends (rule 3)."""
        while True:
            lane = self._lanes[number] = _Lane(number)
            await self._run_lane(lane)
            await trio.sleep(LANE_RESTART_S if lane.ready else LANE_RETRY_S)

    async def _run_lane(self, lane: _Lane) -> None:
        command = [sys.executable, "-m", "prsm_node.storage_lane",
                   "--temp-dir", str(self._temp_dir),
                   "--frame-size-max", str(self._frame_size_max),
                   "--request-timeout-s", f"{self._request_timeout_s:g}",
                   "--idle-close-s", f"{self._idle_close_s:g}"]
        if self._durable:
            command.append("--durable")
        try:
            # Its own session: a signal to the node's process group (Ctrl-C) reaches the
            # node, which stops the lanes in order (rule 5); a lane outlives nothing, as
            # it exits when its stdin ends.
            lane.process = await trio.lowlevel.open_process(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            self._lane_died(lane, f"cannot start: {error}")
            return
        self.started += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_start, lane)
                await self._read_answers(lane)
                nursery.cancel_scope.cancel()
        finally:
            self._lane_died(lane, "its output ended")
            with trio.CancelScope(shield=True):
                await self._stop(lane)

    async def _watch_start(self, lane: _Lane) -> None:
        await trio.sleep(LANE_START_S)
        if not lane.ready:
            log.warning("storage.lane_start_timeout", lane=lane.number, after_s=LANE_START_S)
            lane.process.kill()

    async def _read_answers(self, lane: _Lane) -> None:
        reader = PipeStream(lane.process.stdout)
        limit = self._frame_size_max + LANE_MESSAGE_MAX
        while True:
            try:
                seq, status, staged, frames = await read_frame(reader, limit)
            except (FrameError, ValueError, TypeError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as error:
                if not isinstance(error, FrameError) or "ended" not in str(error):
                    log.warning("storage.lane_output_invalid", lane=lane.number,
                                error=str(error))
                return
            if seq == READY_SEQ:
                log.info("storage.lane_ready", lane=lane.number, peer_id=status,
                         pid=lane.process.pid)
                lane.ready = True
                continue
            answer = WantAnswer(
                status,
                tuple(StagedBlock(Cid.from_bytes(c), size, name, node)
                      for c, size, name, node in staged),
                tuple(frames))
            waiting = lane.pending.get(seq)
            if waiting is None:
                self._remove_orphans(answer)
                continue
            done, slot = waiting
            slot.append(answer)
            done.set()

    def _remove_orphans(self, answer: WantAnswer) -> None:
        """Rule 4: nobody adopts these files."""
        for block in answer.staged if answer.status == STATUS_OK else ():
            (self._temp_dir / block.temp_name).unlink(missing_ok=True)
            self.orphans_removed += 1

    def _lane_died(self, lane: _Lane, reason: str) -> None:
        if lane.dead:
            return
        lane.dead = True
        if not self._stopping:
            self.died += 1
            log.warning("storage.lane_died", lane=lane.number, reason=reason,
                        pending=len(lane.pending), said_ready=lane.ready)
        for done, _slot in lane.pending.values():
            done.set()

    async def _stop(self, lane: _Lane) -> None:
        process = lane.process
        if process is None:
            return
        if process.stdin is not None:
            with trio.move_on_after(1):
                await process.stdin.aclose()
        with trio.move_on_after(LANE_STOP_S):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def lanes_wanted(configured: int, cpu_count: int | None) -> int:
    """``storage.fetch_lanes``: -1 picks one lane per core beyond three, up to four (on
    fewer than 4 cores the lanes would take CPU from the providers and the node alike)."""
    if configured >= 0:
        return configured
    cores = cpu_count or 1
    return 0 if cores < 4 else min(4, cores - 3)
