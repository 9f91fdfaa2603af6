"""DhtNode: the sans-IO Kademlia node that combines table, lookups, stores and wire codec.

Rules:
1. One entry point: ``handle(now_ms, input) -> list[Effect]``. The node never reads a clock,
   a socket, a disk or global randomness; ``now_ms`` and a seeded ``random.Random`` come in,
   effects go out (DESIGN.md, "pure cores"). The shell performs each effect and reports
   what happened as a later input (a response, ``RequestFailed``, ``TimerFired``).
2. Nothing a peer sends escapes ``handle`` as an exception: malformed frames, forged or
   stale records, floods and unexpected responses become ``PeerProtocolError`` internally,
   are counted in ``statistics()``, score the peer down, and past ``peer_score_drop`` make
   the node emit ``DropPeer``. Any other exception is our bug.
3. Bounded everywhere: lookups (``lookups_max``), pending requests
   (``requests_pending_max``), scored peers (``peer_scores_max``), stores (records.py),
   table (routing.py), expiry work per tick (``expire_per_tick_max``).
4. Every request gets a ``SetTimer`` for its timeout; a timer for a request that was
   already answered is ignored, so the shell never needs to cancel timers.

Theory of operation. A local command (find, get, put, provide, bootstrap) starts a
``Lookup``; its peers become ``SendRequest`` effects with ids in ``_pending``; responses
and failures feed the lookup until it finishes, then the node acts on the result (PUT_VALUE
or ADD_PROVIDER to the k closest, caching the best record at peers that lacked it) and
emits ``CommandFinished``. Every valid message from a peer refreshes it in the routing
table; a full bucket makes the node ping the bucket's oldest entry (routing.py, rule 1).
A maintenance timer expires records, republishes what we published, refreshes idle buckets
and emits ``PersistTable`` when the table changed. A bootstrap lookup that no peer
answered is retried with a doubling delay (``bootstrap_retry_*``), seeded with the
bootstrap peers even once failures have removed them from the table, until one answers.
"""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from dataclasses import dataclass

from dht import node_effects as fx
from dht.errors import (
    ForgedRecordError,
    InvalidRecordError,
    LocalCommandError,
    PeerProtocolError,
    RecordError,
    RecordTooLargeError,
    UnknownNamespaceError,
)
from dht.keys import key_from_bytes, key_to_bytes
from dht.lookup import Lookup, LookupKind, LookupResult
from dht.messages import MessageKind, Request, Response, decode_frame
from dht.node_effects import DhtConfig, TimerId, TimerKind
from dht.peer import PeerInfo
from dht.records import (
    ProviderStore,
    RecordBody,
    RecordSigner,
    RecordStore,
    RecordValidator,
    Republisher,
    RepublishItem,
    RepublishKind,
    SignedRecord,
    StoreStatistics,
    sign_record,
)
from dht.routing import RoutingTable

_HOSTILE_RECORD_ERRORS = (ForgedRecordError, InvalidRecordError, UnknownNamespaceError,
                          RecordTooLargeError)
_LOOKUP_REQUEST = {LookupKind.FIND_NODE: MessageKind.FIND_NODE,
                   LookupKind.GET_VALUE: MessageKind.GET_VALUE,
                   LookupKind.GET_PROVIDERS: MessageKind.GET_PROVIDERS}
_REASONS_MAX = 64


class _Purpose(enum.Enum):
    LOOKUP = "lookup"
    EVICTION_PING = "eviction_ping"
    STORE = "store"


class _Task(enum.Enum):
    USER = "user"
    BOOTSTRAP = "bootstrap"
    REFRESH = "refresh"
    PUT = "put"
    PROVIDE = "provide"


@dataclass(slots=True)
class _Pending:
    peer: PeerInfo
    kind: MessageKind
    purpose: _Purpose
    lookup_id: int = 0


@dataclass(slots=True)
class _LookupTask:
    lookup: Lookup
    task: _Task
    command_id: int | None
    record: SignedRecord | None = None


class DhtNode:
    """A Kademlia node core; see the module header and ``dht/node_effects.py``."""

    def __init__(
        self,
        *,
        own: PeerInfo,
        rng: random.Random,
        config: DhtConfig | None = None,
        table: RoutingTable | None = None,
        signer: RecordSigner | None = None,
        validator: RecordValidator | None = None,
        now_ms: int = 0,
    ) -> None:
        self.config = config = config or DhtConfig()
        self.own = own
        self.rng = rng
        self.signer = signer
        self.table = table or RoutingTable(
            own.peer_id, bucket_size=config.k, replacements_max=config.replacements_max,
            failures_max=config.failures_max, created_ms=now_ms)
        if self.table.own.peer_id != own.peer_id:
            raise ValueError("routing table belongs to another peer id")
        self.validator = validator or RecordValidator(
            record_size_max=config.record_size_max, ttl_max_ms=config.record_ttl_max_ms)
        self.records = RecordStore(own.key, store_bytes_max=config.record_store_bytes_max,
                                   records_max=config.records_max,
                                   records_per_signer_max=config.records_per_signer_max)
        self.providers = ProviderStore(
            ttl_ms=config.provider_ttl_ms, providers_per_key_max=config.providers_per_key_max,
            keys_per_provider_max=config.provider_keys_per_peer_max,
            records_max=config.provider_records_max)
        self.republisher = Republisher(
            record_interval_ms=config.record_republish_interval_ms,
            provider_interval_ms=config.provider_republish_interval_ms,
            entries_max=config.republish_entries_max)
        self._pending: dict[int, _Pending] = {}
        self._lookups: dict[int, _LookupTask] = {}
        self._scores: OrderedDict[bytes, int] = OrderedDict()
        self._next_request_id = rng.getrandbits(48)
        self._next_lookup_id = 1
        self._maintenance_armed = False
        self._bootstrap_peers: tuple[PeerInfo, ...] = ()
        self._bootstrap_retry_ms = 0  # the delay of the next retry; 0: joined, none due
        self._bootstrap_retry_armed = False  # one retry timer at a time
        self._out: list[fx.Effect] = []
        self.counters: dict[str, int] = dict.fromkeys(fx.COUNTER_NAMES, 0)
        self._hostile_by_reason: dict[str, int] = {}

    # -- entry point -----------------------------------------------------------------------

    def set_own_addresses(self, addrs: tuple[str, ...]) -> None:
        """The addresses we announce as a provider: known once the host listens, which
        is after the shell built this core (handlers first, then connections)."""
        self.own = PeerInfo(peer_id=self.own.peer_id, addrs=addrs)

    def handle(self, now_ms: int, event: fx.Input) -> list[fx.Effect]:
        """Apply one input; return the effects for the shell to perform, in order."""
        self._out = []
        if isinstance(event, fx.FrameReceived):
            try:
                message = decode_frame(event.peer.peer_id, event.frame,
                                       self.config.frame_size_max)
            except PeerProtocolError as error:
                self._penalize(error)
            else:
                self._on_message(now_ms, event.peer, message)
        elif isinstance(event, fx.MessageReceived):
            self._on_message(now_ms, event.peer, event.message)
        elif isinstance(event, fx.RequestFailed):
            self._request_failed(now_ms, event.request_id)
        elif isinstance(event, fx.TimerFired):
            self._on_timer(now_ms, event.timer)
        else:
            self._on_command(now_ms, event)
        out, self._out = self._out, []
        return out

    def statistics(self) -> fx.DhtStatistics:
        return fx.DhtStatistics(
            routing=self.table.statistics(),
            store=StoreStatistics(
                records=len(self.records), bytes_total=self.records.bytes_total,
                expired_total=self.records.expired_total,
                evicted_total=self.records.evicted_total, providers=self.providers.count,
                provider_keys=self.providers.keys(),
                providers_expired_total=self.providers.expired_total),
            lookups_active=len(self._lookups),
            requests_pending=len(self._pending),
            republish_tracked=len(self.republisher),
            counters=tuple(sorted(self.counters.items())),
            hostile_by_reason=tuple(sorted(self._hostile_by_reason.items())),
            peers_scored=len(self._scores),
        )

    # -- messages from peers ---------------------------------------------------------------

    def _on_message(self, now_ms: int, peer: PeerInfo, message: Request | Response) -> None:
        if peer.peer_id == self.own.peer_id:
            self._penalize(PeerProtocolError(peer.peer_id, "message from our own peer id"))
            return
        try:
            if isinstance(message, Request):
                self._answer(now_ms, peer, message)
            else:
                self._on_response(now_ms, peer, message)
        except PeerProtocolError as error:
            self._penalize(error)

    def _answer(self, now_ms: int, peer: PeerInfo, request: Request) -> None:
        self.counters["requests_served"] += 1
        self._seen(now_ms, peer)
        kind, key = request.kind, request.key
        closer: tuple[PeerInfo, ...] = ()
        record, providers, error = None, (), None
        if kind is MessageKind.FIND_NODE:
            closer = self._closest_for(int.from_bytes(key, "big"), peer)
        elif kind is MessageKind.GET_VALUE:
            record = self.records.get(key, now_ms)
            closer = self._closest_for(key_from_bytes(key), peer)
        elif kind is MessageKind.GET_PROVIDERS:
            providers = tuple(self.providers.get(key, now_ms, self.config.providers_max))
            closer = self._closest_for(key_from_bytes(key), peer)
        elif kind is MessageKind.PUT_VALUE:
            assert request.record is not None  # Request.__post_init__ guarantees it
            error = self._store_record(now_ms, peer, request.record)
        elif kind is MessageKind.ADD_PROVIDER:
            assert request.provider is not None
            error = self._store_provider(now_ms, peer, key, request.provider)
        response = Response(request_id=request.request_id, kind=kind, closer=closer,
                            record=record, providers=providers, error=error)
        self._out.append(fx.SendResponse(peer=peer, message=response))

    def _closest_for(self, target: int, requester: PeerInfo) -> tuple[PeerInfo, ...]:
        peers = self.table.closest(target, self.config.k + 1)
        return tuple(p for p in peers if p.peer_id != requester.peer_id)[: self.config.k]

    def _store_record(self, now_ms: int, peer: PeerInfo, record: SignedRecord) -> str | None:
        try:
            size = self.validator.validate(record, now_ms)
            self.records.put(record, size)
        except _HOSTILE_RECORD_ERRORS as error:
            self._penalize(PeerProtocolError(peer.peer_id, f"{error.reason}: {error}"))
            return error.reason
        except RecordError as error:  # stale, expired, quota, full: not hostile by itself
            self.counters["records_refused"] += 1
            return error.reason
        self.counters["records_stored"] += 1
        return None

    def _store_provider(self, now_ms: int, peer: PeerInfo, key: bytes,
                        provider: PeerInfo) -> str | None:
        if provider.peer_id != peer.peer_id:
            raise PeerProtocolError(peer.peer_id, "wrong_provider: provider is not the sender")
        try:
            self.providers.add(key, provider if provider.addrs else peer, now_ms)
        except RecordError as error:
            self._penalize(PeerProtocolError(peer.peer_id, f"provider_flood: {error}"))
            return error.reason
        self.counters["providers_stored"] += 1
        return None

    def _on_response(self, now_ms: int, peer: PeerInfo, response: Response) -> None:
        pending = self._pending.get(response.request_id)
        if pending is None or pending.peer.peer_id != peer.peer_id:
            self.counters["responses_unexpected"] += 1  # late (after its timeout) or stray
            return
        del self._pending[response.request_id]
        if response.kind is not pending.kind:
            self.table.record_failure(peer.peer_id)
            self._fail_lookup_request(now_ms, pending)
            raise PeerProtocolError(peer.peer_id, "wrong_kind: response kind differs")
        self.counters["responses_received"] += 1
        self._seen(now_ms, peer)
        if pending.purpose is _Purpose.EVICTION_PING:
            self.table.ping_answered(peer.peer_id, now_ms)
        elif pending.purpose is _Purpose.STORE and response.error is not None:
            self.counters["stores_refused_by_peer"] += 1
        elif pending.purpose is _Purpose.LOOKUP:
            self._lookup_response(now_ms, peer, pending, response)

    def _lookup_response(self, now_ms: int, peer: PeerInfo, pending: _Pending,
                         response: Response) -> None:
        task = self._lookups.get(pending.lookup_id)
        if task is None:
            return
        record = response.record
        if record is not None:
            try:
                self.validator.validate(record, now_ms)
            except RecordError as error:
                self._fail_lookup_request(now_ms, pending)
                if isinstance(error, _HOSTILE_RECORD_ERRORS):
                    raise PeerProtocolError(peer.peer_id, f"{error.reason}: {error}") from error
                return
        peers = task.lookup.on_response(peer, response.closer, record=record,
                                        providers=response.providers)
        self._advance(now_ms, pending.lookup_id, task, peers)

    def _seen(self, now_ms: int, peer: PeerInfo) -> None:
        outcome = self.table.add(peer, now_ms)
        if outcome.ping is None:
            return
        ping = Request(request_id=0, kind=MessageKind.PING)
        if not self._send(now_ms, outcome.ping, ping, _Purpose.EVICTION_PING):
            self.table.ping_answered(outcome.ping.peer_id, now_ms)  # no room: keep the old

    def _penalize(self, error: PeerProtocolError) -> None:
        self.counters["hostile_inputs"] += 1
        reason = error.reason.split(":", 1)[0][:40]
        if reason not in self._hostile_by_reason and len(self._hostile_by_reason) >= _REASONS_MAX:
            reason = "other"
        self._hostile_by_reason[reason] = self._hostile_by_reason.get(reason, 0) + 1
        score = self._scores.pop(error.peer, 0) + 1
        if score >= self.config.peer_score_drop:
            self.counters["peers_dropped"] += 1
            self.table.remove(error.peer)
            self._out.append(fx.DropPeer(peer_id=error.peer, reason=error.reason))
            return
        self._scores[error.peer] = score
        while len(self._scores) > self.config.peer_scores_max:
            self._scores.popitem(last=False)

    # -- requests, failures, timers --------------------------------------------------------

    def _send(self, now_ms: int, peer: PeerInfo, request: Request, purpose: _Purpose,
              lookup_id: int = 0) -> bool:
        """Send ``request`` with a fresh id and a timeout timer; False when no room."""
        if len(self._pending) >= self.config.requests_pending_max:
            self.counters["requests_not_sent_full"] += 1
            return False
        request_id = self._next_request_id
        self._next_request_id = (self._next_request_id + 1) % 2**64
        message = Request(request_id=request_id, kind=request.kind, key=request.key,
                          record=request.record, provider=request.provider)
        self._pending[request_id] = _Pending(peer, request.kind, purpose, lookup_id)
        self.counters["requests_sent"] += 1
        self._out.append(fx.SendRequest(peer=peer, message=message))
        self._out.append(fx.SetTimer(timer=TimerId(kind=TimerKind.REQUEST, ident=request_id),
                                     at_ms=now_ms + self.config.request_timeout_ms))
        return True

    def _request_failed(self, now_ms: int, request_id: int) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        self.counters["requests_failed"] += 1
        if pending.purpose is _Purpose.EVICTION_PING:
            self.table.ping_failed(pending.peer.peer_id)
            return
        self.table.record_failure(pending.peer.peer_id)
        self._fail_lookup_request(now_ms, pending)

    def _fail_lookup_request(self, now_ms: int, pending: _Pending) -> None:
        if pending.purpose is not _Purpose.LOOKUP:
            return
        task = self._lookups.get(pending.lookup_id)
        if task is not None:
            peers = task.lookup.on_failure(pending.peer.peer_id)
            self._advance(now_ms, pending.lookup_id, task, peers)

    def _on_timer(self, now_ms: int, timer: TimerId) -> None:
        if timer.kind is TimerKind.REQUEST:
            if timer.ident in self._pending:
                self.counters["requests_timed_out"] += 1
                self._request_failed(now_ms, timer.ident)
        elif timer.kind is TimerKind.LOOKUP_DEADLINE:
            task = self._lookups.get(timer.ident)
            if task is not None:
                task.lookup.on_deadline()
                self._finish(now_ms, timer.ident, task)
        elif timer.kind is TimerKind.MAINTENANCE:
            self._maintain(now_ms)
            self._arm_maintenance(now_ms, rearm=True)
        elif timer.kind is TimerKind.BOOTSTRAP_RETRY:
            self._bootstrap_retry_armed = False
            if self._bootstrap_retry_ms:  # not joined since the timer was set
                self.counters["bootstrap_retries"] += 1
                self._bootstrap(now_ms, None)

    # -- lookups ---------------------------------------------------------------------------

    def _start_lookup(self, now_ms: int, kind: LookupKind, key: bytes, target: int,
                      task: _Task, command_id: int | None,
                      record: SignedRecord | None = None,
                      extra_seeds: tuple[PeerInfo, ...] = ()) -> bool:
        if len(self._lookups) >= self.config.lookups_max:
            self.counters["lookups_refused"] += 1
            if command_id is not None:
                self._out.append(fx.CommandFinished(
                    command_id=command_id, result=fx.CommandFailed(reason="too many lookups")))
            return False
        config = self.config
        seeds = self.table.closest(target, config.k)
        known = {peer.peer_id for peer in seeds}
        seeds += [peer for peer in extra_seeds if peer.peer_id not in known]
        lookup = Lookup(kind=kind, target=target, key=key, own_id=self.own.peer_id,
                        seeds=seeds, started_ms=now_ms,
                        k=config.k, alpha=config.alpha, candidates_max=config.candidates_max,
                        quorum=config.get_value_quorum, providers_max=config.providers_max)
        if kind is LookupKind.GET_VALUE:
            local = self.records.get(key, now_ms)
            if local is not None:
                lookup.add_local_record(local)
        elif kind is LookupKind.GET_PROVIDERS:
            lookup.add_local_providers(
                tuple(self.providers.get(key, now_ms, config.providers_max)))
        lookup_id = self._next_lookup_id
        self._next_lookup_id += 1
        entry = _LookupTask(lookup=lookup, task=task, command_id=command_id, record=record)
        self._lookups[lookup_id] = entry
        self.table.mark_refreshed(target, now_ms)
        self.counters["lookups_started"] += 1
        self._out.append(fx.SetTimer(
            timer=TimerId(kind=TimerKind.LOOKUP_DEADLINE, ident=lookup_id),
            at_ms=now_ms + config.lookup_deadline_ms))
        self._advance(now_ms, lookup_id, entry, lookup.start())
        return True

    def _advance(self, now_ms: int, lookup_id: int, task: _LookupTask,
                 peers: list[PeerInfo]) -> None:
        """Send the lookup's next requests; a peer we cannot send to counts as failed."""
        lookup = task.lookup
        kind = _LOOKUP_REQUEST[lookup.kind]
        key = key_to_bytes(lookup.target) if kind is MessageKind.FIND_NODE else lookup.key
        while peers and not lookup.done:
            failed: list[PeerInfo] = []
            for peer in peers:
                request = Request(request_id=0, kind=kind, key=key)
                if not self._send(now_ms, peer, request, _Purpose.LOOKUP, lookup_id):
                    failed.append(peer)
            peers = []
            for peer in failed:
                if lookup.done:
                    break
                peers.extend(lookup.on_failure(peer.peer_id))
            if failed and peers and len(self._pending) >= self.config.requests_pending_max:
                lookup.on_deadline()  # cannot make progress; bounded rather than spinning
        if lookup.done:
            self._finish(now_ms, lookup_id, task)

    def _finish(self, now_ms: int, lookup_id: int, task: _LookupTask) -> None:
        del self._lookups[lookup_id]
        result = task.lookup.result(now_ms)
        self.counters["lookups_finished"] += 1
        if not result.completed:
            self.counters["lookups_deadline"] += 1
        if task.task is _Task.BOOTSTRAP:
            self._bootstrap_finished(now_ms, joined=bool(result.closest))
        if task.task is _Task.PUT:
            assert task.record is not None
            sent = self._replicate(now_ms, result, Request(
                request_id=0, kind=MessageKind.PUT_VALUE, key=result.key, record=task.record))
            final: fx.CommandResult = fx.StoreResult(key=result.key, peers_sent=sent,
                                                     lookup=result)
        elif task.task is _Task.PROVIDE:
            sent = self._replicate(now_ms, result, Request(
                request_id=0, kind=MessageKind.ADD_PROVIDER, key=result.key, provider=self.own))
            final = fx.StoreResult(key=result.key, peers_sent=sent, lookup=result)
        else:
            if result.kind is LookupKind.GET_VALUE and result.record is not None:
                self._cache_record(now_ms, result)
            final = result
        if task.command_id is not None:
            self._out.append(fx.CommandFinished(command_id=task.command_id, result=final))

    def _replicate(self, now_ms: int, result: LookupResult, request: Request) -> int:
        """Send a store request to the k closest peers the lookup found (paper §2.3)."""
        sent = 0
        for peer in result.closest[: self.config.k]:
            sent += self._send(now_ms, peer, request, _Purpose.STORE)
        return sent

    def _cache_record(self, now_ms: int, result: LookupResult) -> None:
        """Store the best record at peers holding an older version and at the closest peer
        that lacked it (paper §2.3: caching along the lookup path)."""
        assert result.record is not None
        targets = list(result.peers_outdated) + list(result.peers_without_value[:1])
        request = Request(request_id=0, kind=MessageKind.PUT_VALUE, key=result.key,
                          record=result.record)
        for peer in targets:
            self.counters["records_cached_at_peers"] += 1
            self._send(now_ms, peer, request, _Purpose.STORE)

    # -- local commands --------------------------------------------------------------------

    def _on_command(self, now_ms: int, command: fx.Command) -> None:
        if isinstance(command, fx.Bootstrap):
            for peer in command.peers:
                self._seen(now_ms, peer)
            fresh = {peer.peer_id for peer in command.peers}
            kept = tuple(p for p in self._bootstrap_peers if p.peer_id not in fresh)
            self._bootstrap_peers = (kept + tuple(command.peers))[-self.config.k:]
            self._arm_maintenance(now_ms)
            self._bootstrap(now_ms, command.command_id)
        elif isinstance(command, fx.FindNode):
            self._start_lookup(now_ms, LookupKind.FIND_NODE, b"", command.target,
                               _Task.USER, command.command_id)
        elif isinstance(command, fx.GetValue):
            self._start_lookup(now_ms, LookupKind.GET_VALUE, command.key,
                               key_from_bytes(command.key), _Task.USER, command.command_id)
        elif isinstance(command, fx.GetProviders):
            self._start_lookup(now_ms, LookupKind.GET_PROVIDERS, command.key,
                               key_from_bytes(command.key), _Task.USER, command.command_id)
        elif isinstance(command, fx.PutValue):
            self._put(now_ms, command.record, command.command_id, republish=True)
        elif isinstance(command, fx.Provide):
            self._provide(now_ms, command.key, command.command_id, republish=True)
        else:
            raise TypeError(f"not a DHT input: {type(command).__name__}")

    def _bootstrap(self, now_ms: int, command_id: int | None) -> None:
        """Look up our own id, which fills our neighbourhood and puts us in the tables of
        the peers asked; the bootstrap peers seed it even if failures evicted them."""
        self._start_lookup(now_ms, LookupKind.FIND_NODE, b"", self.own.key, _Task.BOOTSTRAP,
                           command_id, extra_seeds=self._bootstrap_peers)

    def _bootstrap_finished(self, now_ms: int, *, joined: bool) -> None:
        """Joined (a peer answered): stop retrying. Otherwise retry later, one timer at a
        time, the delay doubling up to its cap (module header)."""
        if joined:
            self._bootstrap_retry_ms = 0
            return
        if self._bootstrap_retry_armed:
            return
        config = self.config
        delay = self._bootstrap_retry_ms or config.bootstrap_retry_initial_ms
        self._bootstrap_retry_ms = min(2 * delay, config.bootstrap_retry_max_ms)
        self._bootstrap_retry_armed = True
        self._out.append(fx.SetTimer(timer=TimerId(kind=TimerKind.BOOTSTRAP_RETRY, ident=0),
                                     at_ms=now_ms + delay))

    def _put(self, now_ms: int, record: SignedRecord, command_id: int | None,
             republish: bool) -> None:
        try:
            size = self.validator.validate(record, now_ms)
            self.records.put(record, size)
            if republish:
                self.republisher.track(RepublishItem(kind=RepublishKind.RECORD,
                                                     key=record.body.key, record=record),
                                       now_ms)
        except (RecordError, LocalCommandError) as error:
            if republish and command_id is None:  # a republish that can no longer succeed
                self.republisher.untrack(RepublishKind.RECORD, record.body.key)
            if command_id is not None:
                self._out.append(fx.CommandFinished(
                    command_id=command_id, result=fx.CommandFailed(reason=str(error))))
            return
        key = record.body.key
        self._start_lookup(now_ms, LookupKind.FIND_NODE, key, key_from_bytes(key),
                           _Task.PUT, command_id, record)

    def _provide(self, now_ms: int, key: bytes, command_id: int | None,
                 republish: bool) -> None:
        try:
            if not 0 < len(key) <= 256:
                raise LocalCommandError("key size out of range")
            self.providers.add(key, self.own, now_ms)
            if republish:
                self.republisher.track(RepublishItem(kind=RepublishKind.PROVIDER, key=key,
                                                     record=None), now_ms)
        except (RecordError, LocalCommandError) as error:
            if command_id is not None:
                self._out.append(fx.CommandFinished(
                    command_id=command_id, result=fx.CommandFailed(reason=str(error))))
            return
        self._start_lookup(now_ms, LookupKind.FIND_NODE, key, key_from_bytes(key),
                           _Task.PROVIDE, command_id)

    # -- maintenance -----------------------------------------------------------------------

    def _arm_maintenance(self, now_ms: int, rearm: bool = False) -> None:
        """One maintenance timer per node: armed at bootstrap, re-armed when it fires."""
        if self._maintenance_armed and not rearm:
            return
        self._maintenance_armed = True
        self._out.append(fx.SetTimer(timer=TimerId(kind=TimerKind.MAINTENANCE, ident=0),
                                     at_ms=now_ms + self.config.maintenance_interval_ms))

    def _maintain(self, now_ms: int) -> None:
        config = self.config
        self.records.expire(now_ms, config.expire_per_tick_max)
        self.providers.expire(now_ms, config.expire_per_tick_max)
        for item in self.republisher.due(now_ms, config.republish_per_tick_max):
            self.counters["republished"] += 1
            if item.kind is RepublishKind.PROVIDER:
                self._provide(now_ms, item.key, None, republish=True)
            elif item.record is not None:
                self._put(now_ms, self._refreshed(now_ms, item.record), None, republish=True)
        free = config.lookups_max - len(self._lookups)
        count = min(config.refresh_lookups_max, max(free - 1, 0))
        for target in self.table.refresh_keys(now_ms, config.bucket_refresh_idle_ms,
                                              self.rng, count):
            self.counters["bucket_refreshes"] += 1
            self._start_lookup(now_ms, LookupKind.FIND_NODE, b"", target, _Task.REFRESH, None)
        if self.table.changed:
            self.table.changed = False
            self._out.append(fx.PersistTable(snapshot=self.table.snapshot()))

    def _refreshed(self, now_ms: int, record: SignedRecord) -> SignedRecord:
        """Our record with a new expiry, re-signed, when we hold its key; else unchanged."""
        if self.signer is None or self.signer.public_key != record.signer:
            return record
        body = record.body
        fresh = RecordBody(key=body.key, value=body.value, seq=body.seq,
                           expires_at_ms=now_ms + self.config.record_ttl_ms,
                           publisher=body.publisher)
        return sign_record(fresh, self.signer)
