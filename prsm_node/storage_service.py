"""The storage service: the block store on disk and ``/prsm/blocks/1.0.0`` on the wire.

Rules:
1. The block store (``<data_dir>/blocks/``, storage/blockstore.py) is synchronous code over
   files and sqlite3: every call goes through ``trio.to_thread.run_sync``. It is opened in
   ``run`` (before the node dials anyone) and closed when the node stops.
2. Serving: a request is one want-list (``WantBlocks`` frame); the answer is a list of
   message frames, one ``BlockReply`` per block we have and one ``DontHave`` for the rest.
   "Don't have" is answered at once; blocks wait for the upload token buckets (one per
   peer, bounded in number, and one in total), and the answer stops short of
   ``network.frame_size_max`` (blocks left out are simply not answered; the requester asks
   again). A malformed request is the peer's fault (``PeerProtocolError``: the wire scores
   it down).
3. Fetching: one ``FetchDriver`` per root at a time (a second ``fetch`` of the same root
   waits for the first), at most ``storage.fetches_max`` at once. The root is pinned
   *before* the fetch (the block store protects a pinned partial DAG from collection)
   when the caller wants it kept, and announced in the DHT once complete.
4. Every block stored, whatever its source (add, fetch, CAR), goes through ``put``, or for
   ``store add`` and a fetch through a block-store batch followed by ``push``
   (storage_local.add_file, storage_fetch); both push it to Kubo when
   ``storage.kubo_api`` is set (storage_kubo.py).
5. Transfer lanes (``storage.fetch_lanes``, storage_lanes.py): child processes that receive
   fetched blocks on other cores, started with this service and stopped with it. Off while
   ``storage.kubo_api`` is set: a lane's blocks never enter this process, so there would be
   no bytes to push.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.peer.id import ID

from dht import node_effects as fx
from dht.lookup import LookupResult
from prsm_node.config import NetworkConfig, StorageSection
from prsm_node.errors import PeerProtocolError
from prsm_node.net.peers import PeerManager
from prsm_node.net.wire import RequestFailed, Wire
from prsm_node.storage_fetch import (
    BLOCKS_PROTOCOL,
    FetchDriver,
    FetchNetwork,
    FetchOutcome,
    WantAnswer,
)
from prsm_node.storage_kubo import KuboBackend
from prsm_node.storage_lanes import TransferLanes, lanes_wanted
from prsm_node.storage_progress import Operation, Operations
from storage.blockstore import BlockStore
from storage.cid import Cid
from storage.errors import InvalidMessageError, StorageError
from storage.exchange import SessionConfig
from storage.exchange_messages import (
    BlockReply,
    DontHave,
    Message,
    TokenBucket,
    WantBlocks,
    decode_message,
    encode_message,
)
from storage.unixfs import Block

log = structlog.get_logger(__name__)

ENVELOPE_BYTES = 1024
"""Room left in a reply frame for the wire envelope and the list around the messages."""
UPLOAD_WAIT_S_MAX = 5.0
"""Longest a request waits for upload tokens before it is answered with what fits."""


class FetchesBusy(Exception):
    """``storage.fetches_max`` fetches are already running."""


@dataclass(slots=True)
class _Counters:
    want_requests: int = 0
    blocks_served: int = 0
    bytes_served: int = 0
    dont_have_sent: int = 0
    upload_waits: int = 0
    fetches_completed: int = 0
    fetches_failed: int = 0
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    peers_blamed: int = 0


@dataclass(slots=True)
class _Fetch:
    done: trio.Event = field(default_factory=trio.Event)
    outcome: FetchOutcome | None = None
    driver: FetchDriver | None = None


class StorageService:
    def __init__(
        self,
        *,
        config: StorageSection,
        network: NetworkConfig,
        data_dir: Path,
        wire: Wire,
        peers: PeerManager,
        host: Any,
        dht: Any,
    ) -> None:
        self.config = config
        self._network = network
        self.store_dir = data_dir / "blocks"
        self._wire = wire
        self.peers = peers
        self._host = host
        self._dht = dht
        self.own_peer_id: str = host.get_id().to_base58()
        self._store: BlockStore | None = None
        self.kubo = (
            KuboBackend(config.kubo_api, timeout_s=config.kubo_timeout_ms / 1000)
            if config.kubo_api
            else None
        )
        self.operations = Operations(config.operations_max)
        self.counters = _Counters()
        self._fetches: dict[Cid, _Fetch] = {}
        self._upload_total = TokenBucket(config.upload_total_bytes_per_s, config.upload_burst_bytes)
        self._upload_peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._upload_peers_max = 4 * network.peers_max
        self._reply_bytes_max = network.frame_size_max - ENVELOPE_BYTES
        lanes = 0 if self.kubo else lanes_wanted(config.fetch_lanes, os.cpu_count())
        self.lanes = TransferLanes(
            count=lanes, temp_dir=self.store_dir / "tmp",
            frame_size_max=network.frame_size_max,
            request_timeout_s=config.request_timeout_ms / 1000, durable=config.fsync,
        ) if lanes else None

    @property
    def store(self) -> BlockStore:
        assert self._store is not None, "StorageService.run() has not opened the store"
        return self._store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._store = await trio.to_thread.run_sync(self._open_store)
        log.info("storage.opened", path=str(self.store_dir), **asdict(self.store.stat()))
        self._wire.register(BLOCKS_PROTOCOL, self._serve_blocks)
        try:
            async with trio.open_nursery() as nursery:
                if self.lanes is not None:
                    await nursery.start(self.lanes.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    def _open_store(self) -> BlockStore:
        return BlockStore(
            self.store_dir, quota_bytes=self.config.quota_bytes, fsync=self.config.fsync
        )

    def _close(self) -> None:
        self.store.close()
        if self.kubo is not None:
            self.kubo.close()

    async def in_thread(self, function: Any, *args: Any) -> Any:
        """Run a block-store job in a worker thread (rule 1)."""
        return await trio.to_thread.run_sync(function, *args)

    def put(self, block: Block, hashed_here: bool = False) -> bool:
        """Store one block (sync, worker threads only) and push it to Kubo (rule 4)."""
        new = self.store.put(block, hashed_here=hashed_here)
        if self.kubo is not None:
            self.kubo.put(block)
        return new

    def push(self, block: Block) -> None:
        """Push a block that a batch stored (``store add``) to Kubo, if set (rule 4)."""
        if self.kubo is not None:
            self.kubo.put(block)

    # -- serving (rule 2) -------------------------------------------------------------

    async def _serve_blocks(self, peer: str, payload: Any) -> list[bytes]:
        if not isinstance(payload, bytes):
            raise PeerProtocolError(peer, "blocks: request is not a frame")
        try:
            want = decode_message(payload)
        except InvalidMessageError as error:
            raise PeerProtocolError(peer, f"blocks: {error}") from None
        if not isinstance(want, WantBlocks):
            raise PeerProtocolError(peer, "blocks: a request must be a want-list")
        self.counters.want_requests += 1
        present = await trio.to_thread.run_sync(self._present, want.cids)
        replies: list[Message] = []
        if present:
            await self._wait_for_upload_tokens(peer)
            replies = await trio.to_thread.run_sync(self._read_replies, want.request_id, present)
        answered = {reply.cid for reply in replies if isinstance(reply, BlockReply)}
        missing = tuple(cid for cid in want.cids if cid not in answered and cid not in present)
        if missing:
            replies.append(DontHave(request_id=want.request_id, cids=missing))
            self.counters.dont_have_sent += len(missing)
        blocks = [reply for reply in replies if isinstance(reply, BlockReply)]
        self._charge_upload(peer, len(blocks), sum(len(reply.data) for reply in blocks))
        return [encode_message(reply) for reply in replies]

    def _present(self, cids: tuple[Cid, ...]) -> list[Cid]:
        return [cid for cid in cids if self.store.has(cid)]

    def _read_replies(self, request_id: int, cids: list[Cid]) -> list[Message]:
        """Blocks that fit one reply frame; a block gone or corrupt since ``has`` is skipped."""
        replies: list[Message] = []
        budget = self._reply_bytes_max
        for cid in cids:
            size = self.store.size_of(cid)
            if size is None or size + ENVELOPE_BYTES // 8 > budget:
                continue
            try:
                data = self.store.get(cid)
            except StorageError:
                continue
            replies.append(BlockReply(request_id=request_id, cid=cid, data=data))
            budget -= len(data) + ENVELOPE_BYTES // 8
        return replies

    def _peer_bucket(self, peer: str) -> TokenBucket:
        bucket = self._upload_peers.pop(peer, None)
        if bucket is None:
            bucket = TokenBucket(
                self.config.upload_peer_bytes_per_s, self.config.upload_burst_bytes
            )
        self._upload_peers[peer] = bucket  # most recently used last
        while len(self._upload_peers) > self._upload_peers_max:
            self._upload_peers.popitem(last=False)
        return bucket

    async def _wait_for_upload_tokens(self, peer: str) -> None:
        now_ms = _now_ms()
        ready_ms = max(
            self._peer_bucket(peer).ready_at_ms(now_ms), self._upload_total.ready_at_ms(now_ms)
        )
        if ready_ms > now_ms:
            self.counters.upload_waits += 1
            await trio.sleep(min(UPLOAD_WAIT_S_MAX, (ready_ms - now_ms) / 1000))

    def _charge_upload(self, peer: str, count: int, size: int) -> None:
        if count:
            now_ms = _now_ms()
            self._peer_bucket(peer).charge(now_ms, size)
            self._upload_total.charge(now_ms, size)
            self.counters.blocks_served += count
            self.counters.bytes_served += size

    # -- fetching (rule 3) ------------------------------------------------------------

    async def fetch(
        self,
        root: Cid,
        *,
        pin: bool,
        operation: Operation | None = None,
        hints: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> FetchOutcome:
        """Fetch the DAG under ``root`` from providers (or find it local); never raises for a
        failed fetch: the outcome says why. Raises ``FetchesBusy`` past the limit."""
        running = self._fetches.get(root)
        if running is not None:
            await running.done.wait()
            assert running.outcome is not None
            return running.outcome
        if len(self._fetches) >= self.config.fetches_max:
            raise FetchesBusy(f"{self.config.fetches_max} fetches are running")
        entry = self._fetches[root] = _Fetch()
        try:
            if pin:
                await self.in_thread(self.store.pin, root)
            entry.driver = self._driver(root, hints)
            if operation is not None:
                operation.root = str(root)
            entry.outcome = await self._drive(entry.driver, operation)
        finally:
            del self._fetches[root]
            entry.done.set()
        await self._after_fetch(entry.outcome, pinned=pin)
        return entry.outcome

    def _driver(self, root: Cid, hints: tuple[tuple[str, tuple[str, ...]], ...]) -> FetchDriver:
        config = self.config
        session = SessionConfig(
            in_flight_per_peer_max=config.in_flight_per_peer_max,
            peers_max=config.providers_max,
            request_timeout_ms=config.request_timeout_ms,
            strikes_max=config.strikes_max,
            peer_rate_bytes_per_s=config.download_peer_bytes_per_s,
            peer_burst_bytes=config.download_burst_bytes,
            total_rate_bytes_per_s=config.download_total_bytes_per_s,
            total_burst_bytes=config.download_burst_bytes,
        )
        network = FetchNetwork(
            request=self._request_blocks,
            find_providers=self.find_providers,
            connect=self.connect,
            penalise=self._penalise,
            own_peer_id=self.own_peer_id,
            lane_request=self._lane_request if self.lanes is not None else None,
        )
        return FetchDriver(
            root=root,
            store=self.store,
            push=self.push,
            session_config=session,
            network=network,
            provider_lookups_max=config.provider_lookups_max,
            hints=hints,
        )

    async def _drive(self, driver: FetchDriver, operation: Operation | None) -> FetchOutcome:
        if operation is None:
            return await driver.run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_mirror_progress, driver, operation)
            outcome = await driver.run()
            nursery.cancel_scope.cancel()
        _copy_progress(driver, operation)
        return outcome

    async def _after_fetch(self, outcome: FetchOutcome, *, pinned: bool) -> None:
        statistics = outcome.statistics
        self.counters.blocks_fetched += statistics.blocks_fetched
        self.counters.bytes_fetched += statistics.bytes_received
        self.counters.peers_blamed += statistics.peers_dropped
        if outcome.complete:
            self.counters.fetches_completed += 1
            if statistics.blocks_fetched:
                await self.provide(outcome.root)
        else:
            self.counters.fetches_failed += 1
            log.warning(
                "storage.fetch_failed",
                root=str(outcome.root),
                reason=outcome.reason,
                blocks_done=statistics.blocks_done,
                blocks_known=statistics.blocks_known,
            )

    def active_fetches(self) -> list[tuple[Cid, Any, dict[str, int]]]:
        return [
            (root, f.driver.statistics, f.driver.bytes_by_peer)
            for root, f in self._fetches.items()
            if f.driver
        ]

    # -- the network, as the fetch driver and the replicator need it ------------------

    async def _request_blocks(self, peer: str, want: bytes) -> Any | None:
        try:
            return await self._wire.request(peer, BLOCKS_PROTOCOL, want)
        except RequestFailed as error:
            log.debug("storage.request_failed", peer=peer, reason=error.reason)
            return None

    async def _lane_request(self, peer: str, addresses: tuple[str, ...],
                            cid: Cid) -> WantAnswer | None:
        """A want through a lane, dialling the addresses the fetch learned for ``peer``
        and those the peer announced to us (identify)."""
        assert self.lanes is not None
        known = self.peers.identified_addresses(peer)
        return await self.lanes.request(peer, tuple(dict.fromkeys([*addresses, *known])), cid)

    def _penalise(self, peer: str, reason: str) -> None:
        self.peers.penalise(peer, reason)

    async def find_providers(self, root: Cid) -> list[tuple[str, tuple[str, ...]]]:
        """Providers from a DHT lookup (it includes those that announced themselves to us)."""
        key = root.to_bytes()
        result = await self._dht.command(lambda c: fx.GetProviders(command_id=c, key=key))
        if not isinstance(result, LookupResult):
            log.info("storage.provider_lookup_failed", root=str(root), result=str(result))
            return []
        found = result.providers
        unique = {peer.peer_id: peer for peer in found}
        return [(ID(peer.peer_id).to_base58(), peer.addrs) for peer in unique.values()]

    async def provide(self, root: Cid) -> int:
        """Announce ``root`` in the DHT; the number of peers that took the record."""
        result = await self._dht.command(lambda c: fx.Provide(command_id=c, key=root.to_bytes()))
        if isinstance(result, fx.StoreResult):
            return result.peers_sent
        log.info("storage.provide_failed", root=str(root), result=str(result))
        return 0

    async def connect(self, peer: str, addrs: tuple[str, ...]) -> bool:
        return await self.peers.reach(peer, addrs, remember=False)

    def statistics(self) -> dict[str, Any]:
        counters = asdict(self.counters)
        if self.kubo is not None:
            kubo = self.kubo.statistics()
            counters |= {"kubo_pushed": kubo.pushed, "kubo_failed": kubo.failed}
        if self.lanes is not None:
            counters |= self.lanes.statistics()
        return counters


def _now_ms() -> int:
    return int(trio.current_time() * 1000)


def _copy_progress(driver: FetchDriver, operation: Operation) -> None:
    statistics = driver.statistics
    operation.blocks_done = statistics.blocks_done
    operation.blocks_total = statistics.blocks_known
    operation.bytes_done = statistics.bytes_received


async def _mirror_progress(driver: FetchDriver, operation: Operation) -> None:
    while True:
        _copy_progress(driver, operation)
        await trio.sleep(0.1)
