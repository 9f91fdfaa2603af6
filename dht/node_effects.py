"""The DhtNode's vocabulary: its configuration, inputs, effects, results and statistics.

Rules:
1. Every input and effect is a frozen, slotted, keyword-only dataclass, checked when built.
2. Every limit of the node is a field of ``DhtConfig`` with a ``*_max`` or unit suffix and a
   reason; ``DhtConfig.__post_init__`` checks how the limits relate and names the field.
3. Nothing here does work: ``dht/node.py`` interprets the inputs and produces the effects.

The shell's contract (what ``prsm_node`` or the simulator must do with each effect):
- ``SendRequest(peer, message)``: encode (``dht.messages.encode_message``), send on the
  peer's ``/prsm/kad/1.0.0`` stream; feed the answer back as ``FrameReceived`` (or
  ``MessageReceived``); if it cannot be sent, feed ``RequestFailed(request_id)``.
  The timeout is the node's own ``SetTimer``; the shell need not time requests.
- ``SendResponse(peer, message)``: encode and send; nothing to report back.
- ``SetTimer(timer, at_ms)``: at ``at_ms`` feed ``TimerFired(timer)``. Timers are never
  cancelled; the node ignores the ones it no longer needs.
- ``CommandFinished(command_id, result)``: answer the control-API call with that id.
- ``PersistTable(snapshot)``: write the msgpack-able snapshot to the data dir; at start,
  rebuild with ``RoutingTable.from_snapshot`` and pass it as ``DhtNode(table=...)``.
- ``DropPeer(peer_id, reason)``: close the peer's connection (it sent hostile input).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from dht.lookup import ALPHA, CANDIDATES_MAX, LookupResult
from dht.messages import FRAME_SIZE_MAX, PEERS_PER_MESSAGE_MAX, Request, Response
from dht.peer import PeerInfo
from dht.records import (
    PROVIDER_KEYS_PER_PEER_MAX,
    PROVIDER_RECORDS_MAX,
    PROVIDER_TTL_MS,
    PROVIDERS_PER_KEY_MAX,
    RECORD_SIZE_MAX,
    RECORD_STORE_BYTES_MAX,
    RECORD_TTL_MAX_MS,
    RECORD_TTL_MS,
    RECORDS_MAX,
    RECORDS_PER_SIGNER_MAX,
    REPUBLISH_ENTRIES_MAX,
    SignedRecord,
    StoreStatistics,
)
from dht.routing import BUCKET_SIZE, FAILURES_MAX, REPLACEMENTS_MAX, RoutingStatistics

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtConfig:
    """Every limit of the DHT node (node.toml.example ``[dht]`` mirrors these names)."""

    k: int = BUCKET_SIZE  # libp2p Kademlia spec: k = 20
    alpha: int = ALPHA  # libp2p Kademlia spec: alpha = 3
    replacements_max: int = REPLACEMENTS_MAX
    failures_max: int = FAILURES_MAX
    request_timeout_ms: int = 5_000
    """One round trip on an open stream takes ~2 ms (DESIGN.md: 300-700/s); a new
    connection ~250 ms. 5 s is generous yet keeps a lookup with a few dead peers short."""
    lookup_deadline_ms: int = 60_000
    """A lookup converges in a handful of rounds; 60 s allows ~10 rounds of timeouts."""
    lookups_max: int = 64
    requests_pending_max: int = 512
    candidates_max: int = CANDIDATES_MAX
    get_value_quorum: int = 3
    """GET_VALUE stops after this many peers returned a valid record; more than one so a
    single stale replica does not decide the answer (go-libp2p-kad-dht also asks for a
    quorum of responses before choosing the best record)."""
    providers_max: int = PEERS_PER_MESSAGE_MAX
    maintenance_interval_ms: int = MINUTE_MS
    bootstrap_retry_initial_ms: int = 1_000
    """A bootstrap that no peer answered is retried after this, then after twice as long
    each time up to ``bootstrap_retry_max_ms``. Without it one lost request left a node
    out of the network until the next bucket refresh (10 min): its bootstrap peer never
    learns of it, since peers enter a table only by talking to it."""
    bootstrap_retry_max_ms: int = MINUTE_MS
    bucket_refresh_idle_ms: int = 10 * MINUTE_MS
    """go-libp2p-kad-dht refreshes its table every 10 min (the paper says 1 h)."""
    refresh_lookups_max: int = 4
    """Refresh lookups started per maintenance tick; the rest wait for the next tick."""
    record_ttl_ms: int = RECORD_TTL_MS
    record_ttl_max_ms: int = RECORD_TTL_MAX_MS
    record_republish_interval_ms: int = 12 * HOUR_MS
    """A third of the 36 h TTL: two republish chances before a record would expire."""
    provider_ttl_ms: int = PROVIDER_TTL_MS
    provider_republish_interval_ms: int = 12 * HOUR_MS
    """Half the 24 h provider TTL, as the Kademlia paper republishes well within expiry."""
    record_size_max: int = RECORD_SIZE_MAX
    record_store_bytes_max: int = RECORD_STORE_BYTES_MAX
    records_max: int = RECORDS_MAX
    records_per_signer_max: int = RECORDS_PER_SIGNER_MAX
    providers_per_key_max: int = PROVIDERS_PER_KEY_MAX
    provider_keys_per_peer_max: int = PROVIDER_KEYS_PER_PEER_MAX
    provider_records_max: int = PROVIDER_RECORDS_MAX
    republish_entries_max: int = REPUBLISH_ENTRIES_MAX
    republish_per_tick_max: int = 64
    expire_per_tick_max: int = 1024
    frame_size_max: int = FRAME_SIZE_MAX
    peer_score_drop: int = 10
    """Hostile inputs from one peer before the node asks the shell to drop it."""
    peer_scores_max: int = 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"dht config: {field.name} must be >= 1")
        checks = [
            (self.alpha <= self.k, "alpha must be <= k"),
            (self.k <= self.candidates_max, "candidates_max must be >= k"),
            (self.k <= PEERS_PER_MESSAGE_MAX, "k must be <= 20 (peers per message)"),
            (self.providers_max <= PEERS_PER_MESSAGE_MAX, "providers_max must be <= 20"),
            (self.requests_pending_max >= self.alpha + self.k,
             "requests_pending_max must be >= alpha + k"),
            (self.bootstrap_retry_initial_ms <= self.bootstrap_retry_max_ms,
             "bootstrap_retry_initial_ms must be <= bootstrap_retry_max_ms"),
            (self.request_timeout_ms < self.lookup_deadline_ms,
             "request_timeout_ms must be < lookup_deadline_ms"),
            (self.record_republish_interval_ms < self.record_ttl_ms,
             "record_republish_interval_ms must be < record_ttl_ms"),
            (self.record_ttl_ms <= self.record_ttl_max_ms,
             "record_ttl_ms must be <= record_ttl_max_ms"),
            (self.provider_republish_interval_ms < self.provider_ttl_ms,
             "provider_republish_interval_ms must be < provider_ttl_ms"),
            (self.record_size_max <= self.frame_size_max // 4,
             "record_size_max must be <= frame_size_max / 4"),
            (self.record_size_max <= self.record_store_bytes_max,
             "record_store_bytes_max must be >= record_size_max"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"dht config: {message}")


class TimerKind(enum.Enum):
    REQUEST = "request"  # ident: request id
    LOOKUP_DEADLINE = "lookup_deadline"  # ident: lookup id
    MAINTENANCE = "maintenance"  # ident: 0
    BOOTSTRAP_RETRY = "bootstrap_retry"  # ident: 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerId:
    kind: TimerKind
    ident: int


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameReceived:
    """A frame from ``peer`` (authenticated peer id; addrs as the connection knows them)."""

    peer: PeerInfo
    frame: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """An already-decoded message (the simulator's fast path; same checks otherwise)."""

    peer: PeerInfo
    message: Request | Response


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailed:
    request_id: int
    reason: str = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    timer: TimerId


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    """Add known peers, look up our own id (fills our neighbourhood), arm maintenance."""

    command_id: int | None
    peers: tuple[PeerInfo, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode:
    """Peer routing: the k closest peers to ``target`` (``key_from_bytes(peer_id)`` to find
    a peer; its addresses are in the result when it is online)."""

    command_id: int | None
    target: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GetValue:
    command_id: int | None
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GetProviders:
    command_id: int | None
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PutValue:
    """Store locally, replicate to the k closest, republish until untracked."""

    command_id: int | None
    record: SignedRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Provide:
    command_id: int | None
    key: bytes


Command = Bootstrap | FindNode | GetValue | GetProviders | PutValue | Provide
Input = FrameReceived | MessageReceived | RequestFailed | TimerFired | Command


# -- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    peer: PeerInfo
    message: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResponse:
    peer: PeerInfo
    message: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    timer: TimerId
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult:
    """PUT_VALUE / ADD_PROVIDER: sent to ``peers_sent`` of the closest the lookup found."""

    key: bytes
    peers_sent: int
    lookup: LookupResult


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandFailed:
    reason: str


CommandResult = LookupResult | StoreResult | CommandFailed


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandFinished:
    command_id: int
    result: CommandResult


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistTable:
    snapshot: dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class DropPeer:
    peer_id: bytes
    reason: str


Effect = SendRequest | SendResponse | SetTimer | CommandFinished | PersistTable | DropPeer


COUNTER_NAMES = (
    "requests_sent", "requests_served", "requests_failed", "requests_timed_out",
    "requests_not_sent_full", "responses_received", "responses_unexpected",
    "lookups_started", "lookups_finished", "lookups_deadline", "lookups_refused",
    "records_stored", "records_refused", "records_cached_at_peers", "providers_stored",
    "stores_refused_by_peer", "republished", "bucket_refreshes", "hostile_inputs",
    "peers_dropped", "bootstrap_retries",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DhtStatistics:
    """An immutable snapshot for /metrics and ``dht table`` (trio's ``statistics()``)."""

    routing: RoutingStatistics
    store: StoreStatistics
    lookups_active: int
    requests_pending: int
    republish_tracked: int
    counters: tuple[tuple[str, int], ...]
    hostile_by_reason: tuple[tuple[str, int], ...]
    peers_scored: int

    def counter(self, name: str) -> int:
        return dict(self.counters)[name]
