"""One fetch: drives the pure ``storage.exchange.FetchSession`` over ``/prsm/blocks/1.0.0``.

The core decides which block goes to which provider, verifies every block against its CID,
blames liars and retires silent peers; this shell performs its effects:
- ReadLocal / StoreBlock: answered against the block store *in a worker thread*, together
  with the ``handle`` call that produced them, because the core hashes every received
  block (1 MiB of sha256) and the store reads and writes files: none of that runs on the
  event loop. Only this driver task calls the core, one step at a time. The blocks go into
  one block-store batch per fetch (``BlockStore.batch``): with fsync, the batch's writer
  thread writes, fsyncs and publishes them in groups while the steps go on, instead of
  two fsyncs per block inside the step (``storage.blockstore`` rule 7). The store does not
  hash them again (``hashed_here``): the core emits ``StoreBlock`` only for bytes it has
  just hashed against the CID (``storage.exchange`` rule 4). A group becomes visible to
  ``has``/``get`` when it is published, and the last one before ``run`` returns; blocks
  staged when the node dies are fetched again (the core checks the store at the start).
- Transfer lanes (``prsm_node.storage_lanes``, when the node runs them): a want goes to a
  lane process, which receives, hashes and writes the block; it comes back as
  ``BlockVerified`` naming the lane's temp file, which an ``AdoptBlock`` effect puts into
  the batch (``BlockBatch.adopt``). A lane file fed to a step and not adopted by it (a
  duplicate, a dropped peer, a session already ended) is removed after the step; those
  still queued when the fetch ends, after it. Without a lane (none configured, or it died)
  the want is asked in-process as below, and so are all wants to a provider that a lane
  could not dial (it may have dialled us from behind a NAT: our connection still works).
- SendWant: one wire request per CID (the wire answers each request with one frame capped
  at ``network.frame_size_max``, and a reply of eight 1 MiB blocks would not fit); the
  requests share the peer's long-lived stream, so they pipeline. Answers come back as
  FrameReceived, failures as RequestFailed.
- SetTimer: a heap served by the driver loop. DropPeer: the peer is scored down
  (``peers.penalise``) when the core blames it, and never re-added to this fetch.
- NeedProviders: another DHT provider lookup, at most ``provider_lookups_max`` per fetch;
  after the last one finds nobody new the fetch is cancelled with a reason.

Inputs reach the driver through one bounded channel; the driver drains it into one batch
per step (TigerStyle: run at your own pace). A peer whose requests fail
``PEER_FAILURES_MAX`` times in a row (killed, disconnected) leaves the session
(ProviderRemoved): otherwise its instant failures would win every scheduling round.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from storage import exchange as ex
from storage.blockstore import BlockBatch, BlockStore
from storage.cid import CODEC_DAG_PB, Cid
from storage.errors import CorruptBlockError, LocalCommandError, StorageError
from storage.exchange_messages import WANTS_PER_MESSAGE_MAX, WantBlocks, encode_message
from storage.unixfs import Block

log = structlog.get_logger(__name__)

BLOCKS_PROTOCOL = "/prsm/blocks/1.0.0"
PEER_FAILURES_MAX = 3
EVENTS_PER_STEP_MAX = 128
PROVIDER_RETRY_S = 1.0
"""Pause before looking up providers again after a lookup found nobody new."""

Provider = tuple[str, tuple[str, ...]]  # (peer id, addresses)

STATUS_OK = "ok"
STATUS_FAILED = "failed"  # no answer: stream, timeout
STATUS_MALFORMED = "malformed"  # the answer was not a list of frames
STATUS_UNREACHABLE = "unreachable"  # a lane could not dial the provider (the node may)


@dataclass(frozen=True, slots=True)
class StagedBlock:
    """A block a transfer lane hashed against its CID and wrote under the store's tmp/."""

    cid: Cid
    size: int
    temp_name: str
    node: bytes | None  # a dag-pb node's bytes, None for a raw leaf


@dataclass(frozen=True, slots=True)
class WantAnswer:
    """A provider's answer to one want, asked in-process (frames only) or by a lane."""

    status: str  # STATUS_*
    staged: tuple[StagedBlock, ...] = ()
    frames: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchNetwork:
    """What a fetch needs from the node: each call may block and raises nothing."""

    request: Callable[[str, bytes], Awaitable[Any | None]]  # wire answer, None on failure
    find_providers: Callable[[Cid], Awaitable[list[Provider]]]
    connect: Callable[[str, tuple[str, ...]], Awaitable[bool]]
    penalise: Callable[[str, str], None]
    own_peer_id: str
    # A want through a transfer lane (peer, addresses, cid), None: no lane took it.
    lane_request: Callable[[str, tuple[str, ...], Cid], Awaitable[WantAnswer | None]] | None \
        = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOutcome:
    root: Cid
    complete: bool
    reason: str
    statistics: ex.SessionStatistics
    bytes_by_peer: dict[str, int]  # answer bytes from each provider, dropped ones included
    duration_ms: int


def _now_ms() -> int:
    return int(trio.current_time() * 1000)


class FetchDriver:
    """Fetch the DAG under ``root`` into ``store`` (module header)."""

    def __init__(
        self,
        *,
        root: Cid,
        store: BlockStore,
        push: Callable[[Block], None],
        session_config: ex.SessionConfig,
        network: FetchNetwork,
        provider_lookups_max: int,
        hints: tuple[Provider, ...] = (),
    ) -> None:
        self.root = root
        self._store = store
        self._push = push
        self._batch: BlockBatch | None = None
        self._session = ex.FetchSession(root, session_config)
        self._network = network
        self._lookups_max = provider_lookups_max
        self._hints = hints
        capacity = session_config.peers_max * session_config.in_flight_per_peer_max + 64
        self._send, self._receive = trio.open_memory_channel[ex.Input](capacity)
        self._timers: list[tuple[int, int, tuple[str, int]]] = []
        self._timer_order = itertools.count()
        self._added: set[str] = set()
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._lanes_cannot_dial: set[str] = set()
        self._excluded: set[str] = set()
        self._failures: dict[str, int] = {}
        self._stalled = False
        self._need_providers = trio.Event()
        self._finished: ex.Finished | None = None
        self.bytes_by_peer: dict[str, int] = {}
        self.statistics = self._session.statistics()

    async def run(self) -> FetchOutcome:
        started = _now_ms()
        batch_scope = self._store.batch(hashed_here=True)  # module header
        self._batch = await trio.to_thread.run_sync(batch_scope.__enter__)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._step([ex.Start()])
                nursery.start_soon(self._provider_loop)
                while self._session.state is ex.SessionState.ACTIVE:
                    await self._step(await self._next_events())
                nursery.cancel_scope.cancel()
        except BaseException as error:
            self._discard_queued()
            with trio.CancelScope(shield=True):  # discard the staged blocks, end the writer
                await trio.to_thread.run_sync(batch_scope.__exit__, type(error), error,
                                              error.__traceback__)
            raise
        self._discard_queued()
        await trio.to_thread.run_sync(batch_scope.__exit__, None, None, None)
        finished = self._finished
        assert finished is not None, "a session ends with Finished"
        return FetchOutcome(
            root=self.root,
            complete=finished.complete,
            reason=finished.reason,
            statistics=self.statistics,
            bytes_by_peer=dict(self.bytes_by_peer),
            duration_ms=_now_ms() - started,
        )

    # -- one step: the core and the disk in a worker thread ---------------------------

    async def _step(self, events: list[ex.Input]) -> None:
        effects = await trio.to_thread.run_sync(self._step_sync, _now_ms(), events)
        for effect in effects:
            self._perform(effect)

    def _step_sync(self, now_ms: int, events: list[ex.Input]) -> list[ex.Effect]:
        """Feed ``events``; answer ReadLocal and StoreBlock here; return the rest."""
        pending = list(events)
        remaining: list[ex.Effect] = []
        lane_files = {event.staged for event in events if isinstance(event, ex.BlockVerified)}
        try:
            while pending:
                self._handle_sync(now_ms, pending.pop(0), pending, remaining, lane_files)
        finally:
            self._remove_lane_files(lane_files)  # the ones not adopted (module header)
        self.statistics = self._session.statistics()
        return remaining

    def _handle_sync(self, now_ms: int, event: ex.Input, pending: list[ex.Input],
                     remaining: list[ex.Effect], lane_files: set[str]) -> None:
        for effect in self._session.handle(now_ms, event):
            if isinstance(effect, ex.ReadLocal):
                pending.append(self._read_local(effect.cids))
            elif isinstance(effect, ex.AdoptBlock):
                assert self._batch is not None
                lane_files.discard(effect.staged)  # the store's from here, whatever happens
                try:
                    self._batch.adopt(effect.cid, effect.size, effect.staged)
                except LocalCommandError as error:  # the quota is full of pinned data
                    pending.append(ex.Cancel(reason=f"cannot store a block: {error}"))
            elif isinstance(effect, ex.StoreBlock):
                assert self._batch is not None
                try:
                    self._batch.put(effect.block)
                    self._push(effect.block)
                except LocalCommandError as error:  # the quota is full of pinned data
                    pending.append(ex.Cancel(reason=f"cannot store a block: {error}"))
            else:
                remaining.append(effect)

    def _remove_lane_files(self, names: set[str]) -> None:
        temp_dir = self._store.root / "tmp"
        for name in names:
            (temp_dir / Path(name).name).unlink(missing_ok=True)

    def _discard_queued(self) -> None:
        """Remove the lane files of answers still queued when the fetch ends."""
        names: set[str] = set()
        while True:
            try:
                event = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            if isinstance(event, ex.BlockVerified):
                names.add(event.staged)
        self._remove_lane_files(names)

    def _read_local(self, cids: tuple[Cid, ...]) -> ex.LocalBlocks:
        found: list[tuple[Cid, bytes | None]] = []
        missing: list[Cid] = []
        for cid in cids:
            if not self._store.has(cid):
                missing.append(cid)
            elif cid.codec != CODEC_DAG_PB:
                found.append((cid, None))
            else:
                try:
                    found.append((cid, self._store.get(cid)))
                except (CorruptBlockError, StorageError):  # quarantined or gone: fetch it
                    missing.append(cid)
        return ex.LocalBlocks(found=tuple(found), missing=tuple(missing))

    def _perform(self, effect: ex.Effect) -> None:
        if isinstance(effect, ex.SendWant):
            peer = effect.peer.decode()
            for cid in effect.message.cids:
                self._nursery.start_soon(self._request, peer, effect.message.request_id, cid)
        elif isinstance(effect, ex.SetTimer):
            heapq.heappush(self._timers, (effect.at_ms, next(self._timer_order), effect.timer))
        elif isinstance(effect, ex.DropPeer):
            peer = effect.peer.decode()
            self._excluded.add(peer)
            if effect.error is not None:
                self._network.penalise(peer, f"blocks: {effect.reason}")
            log.warning(
                "storage.fetch_peer_dropped",
                root=str(self.root),
                peer=peer,
                reason=effect.reason,
                blamed=effect.error is not None,
            )
        elif isinstance(effect, ex.NeedProviders):
            self._stalled = True
            self._need_providers.set()
        elif isinstance(effect, ex.Finished):
            self._finished = effect

    # -- inputs -----------------------------------------------------------------------

    async def _next_events(self) -> list[ex.Input]:
        deadline = self._timers[0][0] / 1000 if self._timers else math.inf
        events: list[ex.Input] = []
        with trio.move_on_at(deadline):
            events.append(await self._receive.receive())
        now = _now_ms()
        while self._timers and self._timers[0][0] <= now:
            events.append(ex.TimerFired(timer=heapq.heappop(self._timers)[2]))
        while len(events) < EVENTS_PER_STEP_MAX:
            try:
                events.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return events

    async def _request(self, peer: str, request_id: int, cid: Cid) -> None:
        answer = await self._ask_lane(peer, cid)
        if answer is None:
            answer = await self._ask_in_process(peer, request_id, cid)
        await self._answered(peer, request_id, answer)

    async def _ask_lane(self, peer: str, cid: Cid) -> WantAnswer | None:
        """The lane's answer, or None: no lane took the want (module header)."""
        if self._network.lane_request is None or peer in self._lanes_cannot_dial:
            return None
        answer = await self._network.lane_request(peer, self._addresses.get(peer, ()), cid)
        if answer is not None and answer.status == STATUS_UNREACHABLE:
            self._lanes_cannot_dial.add(peer)  # module header: in-process from now on
            return None
        return answer

    async def _ask_in_process(self, peer: str, request_id: int, cid: Cid) -> WantAnswer:
        want = encode_message(WantBlocks(request_id=request_id, cids=(cid,)))
        answer = await self._network.request(peer, want)
        if answer is None:
            return WantAnswer(STATUS_FAILED)
        frames = _frames_of(answer)
        if frames is None:
            return WantAnswer(STATUS_MALFORMED)
        return WantAnswer(STATUS_OK, frames=tuple(frames))

    async def _answered(self, peer: str, request_id: int, answer: WantAnswer) -> None:
        """A want's answer as inputs to the session, whoever asked."""
        if answer.status == STATUS_MALFORMED:
            self._network.penalise(peer, "blocks: the answer is not a list of frames")
        if answer.status != STATUS_OK or not (answer.staged or answer.frames):
            await self._request_failed(peer, request_id)
            return
        self._failures.pop(peer, None)
        size = sum(block.size for block in answer.staged) + sum(map(len, answer.frames))
        self.bytes_by_peer[peer] = self.bytes_by_peer.get(peer, 0) + size
        sent = 0
        try:
            for block in answer.staged:
                await self._send.send(ex.BlockVerified(peer=peer.encode(), cid=block.cid,
                                                       size=block.size, staged=block.temp_name,
                                                       data=block.node))
                sent += 1
        finally:  # cancelled on the way: nobody else knows of the rest
            self._remove_lane_files({block.temp_name for block in answer.staged[sent:]})
        for frame in answer.frames:
            await self._send.send(ex.FrameReceived(peer=peer.encode(), frame=frame))

    async def _request_failed(self, peer: str, request_id: int) -> None:
        await self._send.send(ex.RequestFailed(peer=peer.encode(), request_id=request_id))
        self._failures[peer] = self._failures.get(peer, 0) + 1
        if self._failures[peer] == PEER_FAILURES_MAX and peer not in self._excluded:
            self._excluded.add(peer)
            log.info("storage.fetch_peer_unreachable", root=str(self.root), peer=peer)
            await self._send.send(ex.ProviderRemoved(peer=peer.encode()))

    # -- providers --------------------------------------------------------------------

    async def _provider_loop(self) -> None:
        """Hints first, then up to ``provider_lookups_max`` DHT lookups (module header)."""
        await self._add_providers(list(self._hints))
        for lookup in range(self._lookups_max):
            if lookup > 0:
                await self._need_providers.wait()
            self._need_providers = trio.Event()
            added = await self._add_providers(await self._network.find_providers(self.root))
            if added == 0 and self._stalled:
                await trio.sleep(PROVIDER_RETRY_S)
                self._need_providers.set()
        await self._need_providers.wait()
        reason = f"no reachable provider has the missing blocks ({self._lookups_max} lookups)"
        await self._send.send(ex.Cancel(reason=reason))

    async def _add_providers(self, providers: list[Provider]) -> int:
        added = 0
        for peer, addrs in providers:
            if peer == self._network.own_peer_id or peer in self._added or peer in self._excluded:
                continue
            if not await self._network.connect(peer, addrs):
                continue
            self._added.add(peer)
            self._addresses[peer] = tuple(addrs)
            self._stalled = False
            added += 1
            await self._send.send(ex.ProviderAdded(peer=peer.encode()))
        return added


def _frames_of(answer: Any) -> list[bytes] | None:
    """The frames of a wire answer: a list of byte strings, bounded; None if malformed."""
    if not isinstance(answer, list) or len(answer) > WANTS_PER_MESSAGE_MAX + 1:
        return None
    if not all(isinstance(frame, bytes) for frame in answer):
        return None
    return answer
