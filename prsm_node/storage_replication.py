"""Replication: keep each root this node pins at ``storage.replication_factor`` holders.

Protocol ``/prsm/replicate/1.0.0`` (one wire request): ``{"root": <binary CID>, "size":
<bytes>}`` offers a root; the answer is ``{"accepted": bool, "reason": str}``.

Rules:
1. Offering (every node): every ``replication_interval_ms`` the node walks up to
   ``replication_roots_max`` of its pinned roots that are complete here, counts the
   holders (DHT providers, itself, and peers that accepted an offer within the last
   ``OFFER_TTL_INTERVALS`` intervals and are still fetching), and if they are fewer than
   R offers the root to connected peers that are not holders, at most R - holders of them.
   A peer that refused is not asked again about any root for ``OFFER_TTL_INTERVALS``.
2. Accepting (only with ``storage.replicate = true``): an offer is accepted if the root is
   not pinned here, the declared size fits the free quota and the queue of accepted offers
   (``replication_queue_max``) has room; the size is a hint, the quota is enforced by the
   store while the blocks arrive. One worker fetches the accepted roots one at a time,
   pinned, with the offering peer as a first provider; a failed fetch is unpinned so its
   partial blocks can be collected.
3. Bounded: the remembered offers and refusals are capped (oldest forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import structlog
import trio

from prsm_node.errors import PeerProtocolError
from prsm_node.net.wire import RequestFailed, Wire
from prsm_node.storage_local import dag_size, is_complete
from prsm_node.storage_service import FetchesBusy, StorageService
from storage.cid import CID_SIZE, Cid
from storage.errors import InvalidDataError

log = structlog.get_logger(__name__)

REPLICATE_PROTOCOL = "/prsm/replicate/1.0.0"
OFFER_TTL_INTERVALS = 10
REMEMBERED_MAX = 4096
SIZE_MAX = 1 << 50


@dataclass(slots=True)
class _Counters:
    rounds: int = 0
    offers_sent: int = 0
    offers_accepted_by_peers: int = 0
    offers_received: int = 0
    offers_accepted: int = 0
    replicas_fetched: int = 0
    replicas_failed: int = 0


class Replicator:
    def __init__(self, storage: StorageService, wire: Wire) -> None:
        self._storage = storage
        self._config = storage.config
        self._wire = wire
        self._send, self._receive = trio.open_memory_channel[tuple[Cid, str]](
            self._config.replication_queue_max
        )
        self._queued: set[Cid] = set()
        self._offered: OrderedDict[tuple[Cid, str], float] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()
        self.counters = _Counters()

    @property
    def _ttl_s(self) -> float:
        return OFFER_TTL_INTERVALS * self._config.replication_interval_ms / 1000

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._wire.register(REPLICATE_PROTOCOL, self._serve_offer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._offer_loop)
            if self._config.replicate:
                nursery.start_soon(self._fetch_loop)
            task_status.started()

    # -- offering (rule 1) ------------------------------------------------------------

    async def _offer_loop(self) -> None:
        while True:
            await trio.sleep(self._config.replication_interval_ms / 1000)
            if self._config.replication_factor > 1:
                await self.offer_round()

    async def offer_round(self) -> None:
        self.counters.rounds += 1
        storage = self._storage
        pins = await storage.in_thread(storage.store.pins)
        for root in pins[: self._config.replication_roots_max]:
            if not await storage.in_thread(is_complete, storage.store, root):
                continue
            providers = {peer for peer, _ in await storage.find_providers(root)}
            holders = providers | {storage.own_peer_id} | self._pending_holders(root)
            wanted = self._config.replication_factor - len(holders)
            if wanted <= 0:
                continue
            size = await storage.in_thread(dag_size, storage.store, root)
            for peer in self._candidates(holders)[:wanted]:
                await self._offer(root, size, peer)

    def _pending_holders(self, root: Cid) -> set[str]:
        now = trio.current_time()
        return {
            peer
            for (cid, peer), at in self._offered.items()
            if cid == root and now - at < self._ttl_s
        }

    def _candidates(self, holders: set[str]) -> list[str]:
        now = trio.current_time()
        return [
            info.peer_id
            for info in self._storage.peers.peers()
            if info.peer_id not in holders
            and now - self._refused.get(info.peer_id, -1e9) >= self._ttl_s
        ]

    async def _offer(self, root: Cid, size: int, peer: str) -> None:
        self.counters.offers_sent += 1
        try:
            answer = await self._wire.request(
                peer, REPLICATE_PROTOCOL, {"root": root.to_bytes(), "size": size}
            )
        except RequestFailed as error:
            log.debug("storage.offer_failed", peer=peer, reason=error.reason)
            return
        if not isinstance(answer, dict) or not isinstance(answer.get("accepted"), bool):
            self._storage.peers.penalise(peer, "replicate: malformed answer")
            return
        table = self._offered if answer["accepted"] else self._refused
        key: Any = (root, peer) if answer["accepted"] else peer
        table.pop(key, None)
        table[key] = trio.current_time()
        while len(table) > REMEMBERED_MAX:
            table.popitem(last=False)
        if answer["accepted"]:
            self.counters.offers_accepted_by_peers += 1
            log.info("storage.replica_offered", root=str(root), peer=peer)

    # -- accepting (rule 2) -----------------------------------------------------------

    async def _serve_offer(self, peer: str, payload: Any) -> dict[str, Any]:
        root, size = _parse_offer(peer, payload)
        self.counters.offers_received += 1
        reason = await self._refusal(root, size)
        if reason is None:
            try:
                self._send.send_nowait((root, peer))
            except trio.WouldBlock:
                reason = "replication queue is full"
        if reason is not None:
            return {"accepted": False, "reason": reason}
        self._queued.add(root)
        self.counters.offers_accepted += 1
        log.info("storage.replica_accepted", root=str(root), peer=peer, size=size)
        return {"accepted": True, "reason": "queued"}

    async def _refusal(self, root: Cid, size: int) -> str | None:
        if not self._config.replicate:
            return "replication is off (storage.replicate = false)"
        if root in self._queued:
            return "already queued"
        store = self._storage.store
        if root in await self._storage.in_thread(store.pins):
            return "already pinned"
        statistics = await self._storage.in_thread(store.stat)
        if statistics.quota_bytes - statistics.size_bytes < size:
            return "not enough free quota"
        return None

    async def _fetch_loop(self) -> None:
        async for root, peer in self._receive:
            try:
                await self._replicate(root, peer)
            finally:
                self._queued.discard(root)

    async def _replicate(self, root: Cid, peer: str) -> None:
        storage = self._storage
        addrs = storage.peers.identified_addresses(peer)
        try:
            outcome = await storage.fetch(root, pin=True, hints=((peer, addrs),))
        except FetchesBusy:
            outcome = None
        if outcome is not None and outcome.complete:
            self.counters.replicas_fetched += 1
            log.info("storage.replica_stored", root=str(root), from_peer=peer)
            return
        self.counters.replicas_failed += 1
        await storage.in_thread(storage.store.unpin, root)
        log.warning(
            "storage.replica_failed",
            root=str(root),
            reason=outcome.reason if outcome else "too many fetches running",
        )

    def statistics(self) -> dict[str, int]:
        return asdict(self.counters) | {"queued": len(self._queued)}


def _parse_offer(peer: str, payload: Any) -> tuple[Cid, int]:
    if not isinstance(payload, dict) or set(payload) != {"root", "size"}:
        raise PeerProtocolError(peer, "replicate: an offer is {root, size}")
    root, size = payload["root"], payload["size"]
    if not isinstance(root, bytes) or len(root) > CID_SIZE:
        raise PeerProtocolError(peer, "replicate: root is not a binary CID")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= SIZE_MAX:
        raise PeerProtocolError(peer, "replicate: size out of range")
    try:
        return Cid.from_bytes(root), size
    except InvalidDataError as error:
        raise PeerProtocolError(peer, f"replicate: {error}") from None
