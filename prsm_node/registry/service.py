"""The registry service: gossips registry messages over GossipSub, keeps the view in SQLite,
announces this node's capabilities, and pulls what it missed over
/prsm/registry-sync/1.0.0.

How a message is taken in (gossip, sync, or our own publish alike): `_admit` decodes and
verifies it (messages.decode_entry), asks the view whether it is new (view.View.admit),
and queues it for the one SQLite writer task. For gossip this runs inside the pubsub topic
validator, synchronously, so a message is judged and merged in one step and only what we
accepted is forwarded; a fault (malformed, forged, oversized...) is penalised against the
peer that handed it over (its PeerScores score; banned peers are cut off), a merely stale,
duplicate or expired one is only refused (an honest relay can send those).

Tasks: the SQLite writer (batches of queued entries, one transaction each), expiry,
announcements (capabilities every `announce_interval_ms`, our model announcements renewed
at half their lifetime), the sync client (first peers after start, then one random peer
every `sync_interval_ms`), and a one-off GPU probe in a subprocess
(registry/capabilities.py).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from consensus.codec import Ed25519Signer
from prsm_node.config import RegistrySection
from prsm_node.dht_service import unix_ms
from prsm_node.errors import PeerProtocolError
from prsm_node.net.gossip import Gossip, GossipSettings
from prsm_node.net.peers import PeerManager
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import RequestFailed, Wire
from prsm_node.registry import capabilities as caps
from prsm_node.registry import sync
from prsm_node.registry.messages import (
    CAPABILITY_KEY,
    Entry,
    Kind,
    Limits,
    RegistryMessageError,
    decode_entry,
    schema_problem,
    sign_entry,
)
from prsm_node.registry.store import FILE_NAME, Received, RegistryStore
from prsm_node.registry.view import Verdict, View

log = structlog.get_logger(__name__)

WRITE_BATCH_MAX = 512
SYNC_ON_CONNECT_MAX = 3
"""Peers synced with as they connect after start: the first may itself be new and empty."""
SYNC_QUEUE_MAX = 16
EXPIRY_INTERVAL_S_MAX = 5.0
ANNOUNCE_COALESCE_S = 2.0
MESH_POLL_S = 1.0  # the GossipSub heartbeat, which is when meshes change
MESH_WAIT_S = 600.0
LOCAL_VERDICTS_MAX = 64


class RegistryInputError(Exception):
    """What the control API asked to publish does not fit the schema; the message says why."""


class RegistryClosed(Exception):
    """The store is closed: the node is stopping."""


class RegistryPublishError(Exception):
    """Our own view refused what we published (a cap, or a newer version held)."""

    def __init__(self, verdict: Verdict | None) -> None:
        self.verdict = verdict
        super().__init__(PUBLISH_REFUSALS.get(verdict, PUBLISH_REFUSALS[None]))


PUBLISH_REFUSALS: dict[Verdict | None, str] = {
    Verdict.SIGNER_FULL: "this node already holds registry.entries_per_signer_max entries "
    "of its own; let some expire or raise the limit",
    Verdict.VIEW_FULL: "the registry view is full (registry.entries_max)",
    Verdict.STALE: "a newer version of the same entry was published meanwhile; publish again",
    Verdict.CONFLICT: "a different version with the same sequence number exists; publish again",
    Verdict.DUPLICATE: "the same version is already held",
    None: "the pubsub layer did not hand the message to our validator; see the node log",
}


@dataclass(frozen=True, slots=True)
class SyncReport:
    peer: str
    pages: int
    signers_differing: int
    entries_received: int
    entries_accepted: int


def gossip_settings(config: RegistrySection) -> GossipSettings:
    return GossipSettings(
        heartbeat_interval_s=config.heartbeat_interval_ms / 1000,
        degree=config.mesh_degree,
        degree_low=config.mesh_degree_low,
        degree_high=config.mesh_degree_high,
        flood_publish=config.flood_publish,
        rate_limit_per_s=config.rate_limit_per_s,
        eclipse_protection=config.eclipse_protection,
        eclipse_distinct_ips_min=config.eclipse_distinct_ips_min,
        rpc_size_max=config.rpc_size_max,
    )


class RegistryService:
    def __init__(
        self,
        *,
        config: RegistrySection,
        seed: bytes,
        host: Any,
        wire: Wire,
        peers: PeerManager,
        scores: PeerScores,
        storage: Any,
        data_dir: Path,
        version: str,
    ) -> None:
        self.config = config
        self.signer = Ed25519Signer.from_seed(seed)
        self.own_peer_id = host.get_id().to_base58()
        self._wire, self.peers, self._storage = wire, peers, storage
        self._version = version
        self._path = data_dir / FILE_NAME
        self.limits = Limits(
            message_size_max=config.message_size_max,
            ttl_max_ms=config.ttl_max_ms,
            clock_skew_max_ms=config.clock_skew_max_ms,
        )
        self.view = View(
            entries_max=config.entries_max, entries_per_signer_max=config.entries_per_signer_max
        )
        self.gossip = Gossip(
            host, settings=gossip_settings(config), scores=scores, topics=[k.topic for k in Kind]
        )
        for kind in Kind:
            self.gossip.set_validator(kind.topic, partial(self._validate, kind))
        self._queue_send, self._queue_receive = trio.open_memory_channel[Received](
            config.ingest_queue_max
        )
        self._sync_send, self._sync_receive = trio.open_memory_channel[str](SYNC_QUEUE_MAX)
        self._syncs_on_connect_left = SYNC_ON_CONNECT_MAX
        self._store: RegistryStore | None = None
        self._store_lock = trio.Lock()
        self._closed = False
        self._announce_now = trio.Event()
        self._local_verdicts: dict[bytes, Verdict] = {}
        self._last_seq = 0
        self.hardware = caps.unprobed_hardware()
        self.counters: Counter[str] = Counter()
        self.last_sync: SyncReport | None = None
        self.loaded_at_start = 0
        self._host = host
        self._rng = random.Random()  # picks the anti-entropy peer; no replay needed here
        peers.connection_listeners.append(self._peer_connected)

    # -- start-up ------------------------------------------------------------------------

    @property
    def store(self) -> RegistryStore:
        assert self._store is not None, "RegistryService.run() has not opened the store"
        return self._store

    def _open(self) -> tuple[RegistryStore, int]:
        store = RegistryStore(self._path)
        now = unix_ms()
        for entry_id, version in store.versions(now):
            self.view.restore(entry_id, version)
            if entry_id.signer == self.signer.public_key:
                self._last_seq = max(self._last_seq, version.seq)
        return store, len(self.view)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._store, self.loaded_at_start = await trio.to_thread.run_sync(self._open)
        log.info("registry.opened", path=str(self._path), entries=self.loaded_at_start)
        self._wire.register(sync.PROTOCOL, self._serve_sync)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.gossip.run)
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._expiry_loop)
                nursery.start_soon(self._announce_loop)
                nursery.start_soon(self._announce_when_meshed)
                nursery.start_soon(self._sync_loop)
                if self.config.gpu_probe:
                    nursery.start_soon(self._probe_hardware)
                task_status.started()
        finally:
            # Under the lock: a sync request (served from libp2p's own tasks, which outlive
            # our nursery) may still be inside a store call, and a thread cannot be
            # cancelled; it finishes first. Later calls get RegistryClosed.
            with trio.CancelScope(shield=True):
                async with self._store_lock:
                    self._closed = True
                    await trio.to_thread.run_sync(self.store.close)

    async def in_store(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call in a worker thread, one at a time (store.py rule 1)."""
        async with self._store_lock:
            if self._closed:
                raise RegistryClosed("the node is stopping")
            return await trio.to_thread.run_sync(partial(function, *args, **kwargs))

    # -- taking messages in --------------------------------------------------------------

    def _validate(self, kind: Kind, forwarder: str, data: bytes) -> bool:
        """The pubsub validator of `kind`'s topic: accept (and relay) only new entries."""
        source = "local" if forwarder == self.own_peer_id else "gossip"
        if self._queue_send.statistics().current_buffer_used >= self.config.ingest_queue_max:
            self.counters["refused_overloaded"] += 1
            return False
        received = self._admit(data, kind=kind, peer=forwarder, source=source)
        if received is None:
            return False
        self._queue_send.send_nowait(received)  # room checked above; nothing awaited since
        return True

    def _admit(self, data: bytes, *, kind: Kind | None, peer: str, source: str) -> Received | None:
        now = unix_ms()
        try:
            entry = decode_entry(data, limits=self.limits, now_ms=now, kind=kind)
        except RegistryMessageError as error:
            self.counters[f"rejected_{error.reason}"] += 1
            if error.fault and source != "local":
                self.peers.penalise(peer, f"registry {source}: {error}")
            return None
        verdict = self.view.admit(entry, now)
        self.counters[f"{source}_{verdict.value}"] += 1
        if source == "local":  # publish() reads it back at once; bounded all the same
            self._local_verdicts[entry.fingerprint] = verdict
            while len(self._local_verdicts) > LOCAL_VERDICTS_MAX:
                self._local_verdicts.pop(next(iter(self._local_verdicts)))
        if not verdict.accepted:
            return None
        return Received(entry=entry, received_at_ms=now, source=source)

    async def _write_loop(self) -> None:
        async for first in self._queue_receive:
            batch = [first]
            while len(batch) < WRITE_BATCH_MAX:
                try:
                    batch.append(self._queue_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            changed = await self.in_store(self.store.write, batch)
            self.counters["store_batches"] += 1
            self.counters["store_rows_written"] += changed

    async def _expiry_loop(self) -> None:
        interval_s = min(EXPIRY_INTERVAL_S_MAX, self.config.announce_interval_ms / 1000)
        while True:
            await trio.sleep(interval_s)
            now = unix_ms()
            self.counters["expired"] += len(self.view.expire(now))
            await self.in_store(self.store.delete_expired, now)

    # -- publishing ----------------------------------------------------------------------

    def _next_seq(self, now_ms: int) -> int:
        """Per-publisher sequence: Unix ms, kept increasing (two in one ms, a clock step)."""
        self._last_seq = max(self._last_seq + 1, now_ms)
        return self._last_seq

    def build(self, kind: Kind, fields: dict[str, Any], *, key: str, expires_at_ms: int) -> Entry:
        """Sign an entry of ours; RegistryInputError if the fields do not fit the schema."""
        now = unix_ms()
        body = fields | {
            "kind": kind.value,
            "key": key,
            "seq": self._next_seq(now),
            "issued_at_ms": now,
            "expires_at_ms": expires_at_ms,
            "peer_id": self.own_peer_id,
        }
        problem = schema_problem(body)
        if problem:
            raise RegistryInputError(problem)
        entry = sign_entry(kind, body, self.signer)
        if len(entry.wire) > self.config.message_size_max:
            raise RegistryInputError(
                f"the message would be {len(entry.wire)} bytes; "
                f"registry.message_size_max is {self.config.message_size_max}"
            )
        return entry

    async def publish(self, entry: Entry) -> None:
        """Gossip one of our entries; RegistryPublishError when our own view refused it
        (our validator judges our messages like anyone's)."""
        await self.gossip.publish(entry.kind.topic, entry.wire)
        verdict = self._local_verdicts.pop(entry.fingerprint, None)
        if verdict is None or not verdict.accepted:
            raise RegistryPublishError(verdict)

    async def _announce_loop(self) -> None:
        while True:
            await self._announce_capabilities()
            await self._renew_models()
            with trio.move_on_after(self.config.announce_interval_ms / 1000):
                await self._announce_now.wait()
                # Woken early (the GPU probe done): gather what else comes soon into the
                # same announcement.
                await trio.sleep(ANNOUNCE_COALESCE_S)
            self._announce_now = trio.Event()

    async def _announce_when_meshed(self) -> None:
        """Announce again once the capability topic first has mesh peers. The start-up
        announcement usually goes out before any GRAFT (30 nodes on 2 cores took minutes
        to mesh), and then reaches the others only through their sync pulls, which time out
        on a loaded network; gossip to a mesh reaches them in one heartbeat."""
        topic = Kind.CAPABILITY.topic
        with trio.move_on_after(MESH_WAIT_S):
            while not self.gossip.router.mesh.get(topic):
                await trio.sleep(MESH_POLL_S)
            self._announce_now.set()

    async def _announce_capabilities(self) -> None:
        config = self.config
        try:
            resources = await self._storage.in_thread(
                caps.read_resources,
                self._storage.store,
                self._storage.store_dir,
                self._storage.config.quota_bytes,
            )
        except caps.StorageClosed:
            return  # the node is stopping: the block store closed under this read
        models = await self.in_store(self._models_held, resources.pinned_roots)
        fields = caps.capability_fields(
            hardware=self.hardware,
            resources=resources,
            models=models,
            job_kinds=config.job_kinds,
            hints=config.price_hints,
            addrs=[str(address) for address in self._host.get_addrs()],
            version=self._version,
        )
        entry = self.build(
            Kind.CAPABILITY,
            fields,
            key=CAPABILITY_KEY,
            expires_at_ms=unix_ms() + config.capability_ttl_ms,
        )
        await self._publish_own(entry, "capabilities_announced")

    async def _publish_own(self, entry: Entry, counter: str) -> None:
        """Publish an entry the node makes by itself; a refusal is logged, not raised."""
        try:
            await self.publish(entry)
        except RegistryPublishError as error:
            self.counters[f"{counter}_refused"] += 1
            log.warning("registry.own_entry_refused", kind=entry.kind.value, reason=str(error))
            return
        self.counters[counter] += 1

    def _models_held(self, pinned_roots: tuple[str, ...]) -> list[str]:
        """Models we hold: known models (anyone's announcement) whose manifest root we have
        pinned (sync; store thread). A model we announce names us as holder by itself, so
        announcing one does not re-announce our capabilities."""
        return self.store.known_models(list(pinned_roots), unix_ms())

    async def _renew_models(self) -> None:
        """Re-sign our model announcements past half their lifetime, so they never lapse
        while we run and do lapse when we stop."""
        now = unix_ms()
        bodies = await self.in_store(self.store.own_bodies, self.signer.public_key, Kind.MODEL, now)
        for body in bodies:
            lifetime = body["expires_at_ms"] - body["issued_at_ms"]
            if body["expires_at_ms"] - now > lifetime // 2:
                continue
            fields = {name: body[name] for name in ("name", "architecture", "tags",
                                                    "manifest_cid", "size_bytes", "description")}
            entry = self.build(
                Kind.MODEL, fields, key=body["key"], expires_at_ms=now + lifetime
            )
            await self._publish_own(entry, "models_renewed")

    def listening(self) -> None:
        """The host listens now (it starts after the services): our capability entry
        names our addresses, so announce it again."""
        self._announce_now.set()

    async def _probe_hardware(self) -> None:
        self.hardware = await caps.probe_hardware()
        log.info("registry.hardware", torch=self.hardware.torch, gpus=list(self.hardware.gpus))
        self._announce_now.set()

    # -- sync ----------------------------------------------------------------------------

    def _peer_connected(self, peer_id: str, direction: str) -> None:
        if self._syncs_on_connect_left <= 0:
            return
        try:
            self._sync_send.send_nowait(peer_id)
            self._syncs_on_connect_left -= 1
        except trio.WouldBlock:
            pass

    async def _sync_loop(self) -> None:
        interval_s = self.config.sync_interval_ms / 1000
        while True:
            peer = None
            with trio.move_on_after(interval_s):
                peer = await self._sync_receive.receive()
            if peer is None:
                connected = [info.peer_id for info in self.peers.peers()]
                if not connected:
                    continue
                peer = self._rng.choice(connected)
            await self.sync_with(peer)

    async def sync_with(self, peer: str) -> SyncReport | None:
        """Pull from `peer` every entry we lack or hold older (sync.py); None on failure."""
        client = _SyncClient(self, peer)
        try:
            await client.run()
        except RequestFailed as error:
            self.counters["syncs_failed"] += 1
            log.info("registry.sync_failed", peer=peer, reason=error.reason)
            return None
        except sync.SyncProtocolError as error:
            self.counters["syncs_failed"] += 1
            self.peers.penalise(peer, f"registry sync: {error.reason}")
            return None
        report = client.report()
        self.counters["syncs_done"] += 1
        self.last_sync = report
        log.info("registry.synced", **asdict(report))
        return report

    async def request(self, peer: str, payload: dict[str, Any]) -> Any:
        return await self._wire.request(peer, sync.PROTOCOL, payload)

    async def take_from_sync(self, data: bytes, peer: str) -> bool:
        received = self._admit(data, kind=None, peer=peer, source="sync")
        if received is None:
            return False
        await self._queue_send.send(received)  # a big sync waits for the writer
        return True

    async def _serve_sync(self, peer: str, payload: Any) -> dict[str, Any]:
        try:
            request = sync.parse_request(payload)
        except sync.SyncProtocolError as error:
            raise PeerProtocolError(peer, f"registry sync: {error.reason}") from None
        try:
            return await self._answer_sync(request)
        except RegistryClosed:  # stopping: we have nothing to offer, which is a valid answer
            if isinstance(request, sync.SummaryRequest):
                return {"signers": [], "done": True}
            return {"entries": [], "next": None}

    async def _answer_sync(
        self, request: sync.SummaryRequest | sync.EntriesRequest
    ) -> dict[str, Any]:
        now = unix_ms()
        self.counters["sync_requests_served"] += 1
        if isinstance(request, sync.SummaryRequest):
            limit = min(request.limit, self.config.sync_page_signers_max)
            signers, done = await self.in_store(self.store.summary, request.after, limit, now)
            return {"signers": [[signer, digest] for signer, digest in signers], "done": done}
        bytes_max = min(request.bytes_max, self.config.sync_page_bytes_max)
        entries, following = await self.in_store(
            self.store.entries_page, request.signers, request.after, bytes_max, now
        )
        return {"entries": entries, "next": list(following) if following else None}

    # -- statistics ----------------------------------------------------------------------

    async def statistics(self) -> dict[str, Any]:
        counts = await self.in_store(self.store.counts, unix_ms())
        return {
            "entries": len(self.view),
            "signers": self.view.signers(),
            "loaded_at_start": self.loaded_at_start,
            "stored": counts,
            "queue": self._queue_send.statistics().current_buffer_used,
            "counters": dict(sorted(self.counters.items())),
            "gossip": self.gossip.statistics(),
            "hardware": {
                "probed": self.hardware.probed,
                "torch": self.hardware.torch,
                "gpus": [{"name": name, "memory_bytes": memory}
                         for name, memory in self.hardware.gpus],
            },
            "last_sync": asdict(self.last_sync) if self.last_sync else None,
        }


class _SyncClient:
    """One pull from one peer (sync.py's client side), bounded by `pages_max`."""

    def __init__(self, service: RegistryService, peer: str) -> None:
        self._service = service
        self._peer = peer
        config = service.config
        self._pages_max = 2 * config.entries_max + 16  # each page moves a cursor forward
        self.pages = self.differing = self.received = self.accepted = 0

    async def _ask(self, payload: dict[str, Any]) -> Any:
        if self.pages >= self._pages_max:
            raise sync.SyncProtocolError("sync did not end within its page bound")
        self.pages += 1
        return await self._service.request(self._peer, payload)

    async def run(self) -> None:
        service = self._service
        after = b""
        while True:
            request = sync.SummaryRequest(after=after, limit=service.config.sync_page_signers_max)
            answer = sync.parse_summary_answer(
                await self._ask(sync.summary_request(request.after, request.limit)), request
            )
            signers = [signer for signer, _ in answer.signers]
            own = await service.in_store(service.store.digests, signers, unix_ms())
            differing = [signer for signer, digest in answer.signers if own[signer] != digest]
            self.differing += len(differing)
            for start in range(0, len(differing), sync.SIGNERS_PER_ENTRIES_MAX):
                await self._pull(differing[start:start + sync.SIGNERS_PER_ENTRIES_MAX])
            if answer.done:
                return
            after = signers[-1]

    async def _pull(self, signers: list[bytes]) -> None:
        service = self._service
        cursor: sync.Cursor | None = None
        while True:
            request = sync.EntriesRequest(
                signers=tuple(signers), after=cursor, bytes_max=service.config.sync_page_bytes_max
            )
            answer = sync.parse_entries_answer(
                await self._ask(sync.entries_request(request)), request
            )
            for data in answer.entries:
                self.received += 1
                self.accepted += await service.take_from_sync(data, self._peer)
            if answer.next is None:
                return
            cursor = answer.next

    def report(self) -> SyncReport:
        return SyncReport(
            peer=self._peer,
            pages=self.pages,
            signers_differing=self.differing,
            entries_received=self.received,
            entries_accepted=self.accepted,
        )

