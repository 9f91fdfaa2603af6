"""The fetch session: pure bookkeeping to pull one DAG from several providers at once.

Rules:
1. Sans-IO (DESIGN.md): ``handle(now_ms, input) -> list[Effect]``. The session never reads
   a clock, a socket or the disk; the shell answers ``ReadLocal`` with ``LocalBlocks``,
   performs ``SendWant`` / ``StoreBlock`` / ``DropPeer`` / ``SetTimer``, and feeds back what
   peers sent, what failed and which timers fired.
2. One table (``_TRANSITIONS``) says which input each ``SessionState`` accepts; any other
   pair raises ``SessionStateError`` naming both (our bug). Late inputs after the end are
   accepted and ignored, because the network keeps talking after we are done.
3. Every block goes through: LOCAL_CHECK (is it in the store already? this is how a session
   resumes after an interruption without refetching) -> WANTED -> IN_FLIGHT (assigned to
   exactly one peer, in one request) -> DONE. A block is never in flight twice, so it is
   never asked of the same peer twice at once, and different blocks go to different peers.
4. Every received block is hashed against its CID before it is stored: by the session for
   a ``BlockReply``; for ``BlockVerified``, by a transfer lane of this node (our own code
   in a child process, which already wrote the bytes to a temp file: the session answers
   with ``AdoptBlock``, and the shell discards every lane file not adopted). A wrong block,
   an unsolicited block or an undecodable frame is the peer's fault: ``DropPeer`` with a
   ``PeerProtocolError`` naming it; its requests go back to WANTED for the other peers. A
   timeout is a strike; ``strikes_max`` strikes retire the peer without blame.
5. Bounded: distinct blocks (``blocks_max``), providers (``peers_max``), blocks in flight
   per peer (``in_flight_per_peer_max``), CIDs per request. Bandwidth: a token bucket per
   peer and one in total; a peer whose bucket (or the total) is in debt gets no request
   until the ``bandwidth`` timer says it can.

Theory of operation. ``_schedule`` runs after every input: it walks the WANTED queue in
discovery order (a parent before its children, so the DAG unfolds breadth-first) and gives
each block to the least-loaded peer that has room, is within its bandwidth and has not said
"don't have" for it. The session is COMPLETE when nothing is left to check, want or await.
When blocks are wanted but no peer can serve them it emits ``NeedProviders`` once; the shell
finds more through the DHT (``ProviderAdded``) or gives up (``Cancel``).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from storage.cid import CODEC_DAG_PB, Cid
from storage.errors import (
    InvalidDagError,
    InvalidMessageError,
    PeerProtocolError,
    SessionStateError,
)
from storage.exchange_messages import (
    WANTS_PER_MESSAGE_MAX,
    BlockReply,
    DontHave,
    Message,
    TokenBucket,
    WantBlocks,
    decode_message,
)
from storage.unixfs import DAG_BLOCKS_MAX, Block, links_of


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """Limits of one fetch session (node.toml.example ``[storage]`` mirrors the names)."""

    in_flight_per_peer_max: int = 8
    """8 x 1 MiB in flight per provider keeps a ~30 MB/s py-libp2p stream busy across a
    ~10 ms round trip (DESIGN.md) without hoarding blocks another provider could send."""
    peers_max: int = 32
    blocks_max: int = DAG_BLOCKS_MAX
    request_timeout_ms: int = 30_000
    """8 MiB at 1 MB/s, a slow but honest peer, takes 8 s; 30 s leaves room."""
    strikes_max: int = 3
    peer_rate_bytes_per_s: int = 1 << 40  # effectively unlimited unless configured
    peer_burst_bytes: int = 16 * 1024 * 1024
    total_rate_bytes_per_s: int = 1 << 40
    total_burst_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("in_flight_per_peer_max", "peers_max", "blocks_max", "request_timeout_ms",
                     "strikes_max", "peer_rate_bytes_per_s", "peer_burst_bytes",
                     "total_rate_bytes_per_s", "total_burst_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SessionConfig.{name} must be >= 1")
        if self.in_flight_per_peer_max > WANTS_PER_MESSAGE_MAX:
            raise ValueError("in_flight_per_peer_max must be <= WANTS_PER_MESSAGE_MAX")


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalBlocks:
    """The shell's answer to ``ReadLocal``: the bytes of each found dag-pb block (raw blocks
    may come with None: only their presence matters), and the CIDs it does not have."""

    found: tuple[tuple[Cid, bytes | None], ...] = ()
    missing: tuple[Cid, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderAdded:
    peer: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRemoved:
    peer: bytes  # disconnected, killed, or removed by the shell


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameReceived:
    peer: bytes
    frame: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    peer: bytes
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockVerified:
    """A block a transfer lane of this node received from ``peer``, hashed against ``cid``
    and wrote to a temp file (``staged``: the shell's handle for it); ``data`` holds a
    dag-pb node's bytes (its links are needed), None for a raw leaf (rule 4)."""

    peer: bytes
    cid: Cid
    size: int
    staged: str
    data: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailed:
    peer: bytes
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    timer: tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    reason: str


Input = (Start | LocalBlocks | ProviderAdded | ProviderRemoved | FrameReceived
         | MessageReceived | BlockVerified | RequestFailed | TimerFired | Cancel)


# -- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLocal:
    cids: tuple[Cid, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SendWant:
    peer: bytes
    message: WantBlocks


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreBlock:
    block: Block  # verified against its CID


@dataclass(frozen=True, slots=True, kw_only=True)
class AdoptBlock:
    """Store the lane's file ``staged`` as block ``cid`` (verified by the lane: rule 4)."""

    cid: Cid
    size: int
    staged: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DropPeer:
    peer: bytes
    reason: str
    error: PeerProtocolError | None  # None: retired without blame (unresponsive)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    timer: tuple[str, int]
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedProviders:
    root: Cid
    wanted_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    root: Cid
    complete: bool
    reason: str


Effect = (ReadLocal | SendWant | StoreBlock | AdoptBlock | DropPeer | SetTimer | NeedProviders
          | Finished)


class SessionState(enum.Enum):
    IDLE = "idle"
    ACTIVE = "active"
    COMPLETE = "complete"
    FAILED = "failed"


class BlockState(enum.Enum):
    LOCAL_CHECK = "local_check"
    WANTED = "wanted"
    IN_FLIGHT = "in_flight"
    DONE = "done"


@dataclass(slots=True)
class _BlockEntry:
    state: BlockState
    request_id: int | None = None
    asked: set[bytes] = field(default_factory=set)  # peers ever asked: late replies are ok
    dont_have: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _Peer:
    bucket: TokenBucket
    in_flight: int = 0
    strikes: int = 0
    bytes_received: int = 0


@dataclass(slots=True)
class _Request:
    peer: bytes
    outstanding: set[Cid]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStatistics:
    state: SessionState
    blocks_known: int
    blocks_done: int
    blocks_fetched: int
    blocks_in_flight: int
    bytes_received: int
    duplicate_blocks: int
    providers: int
    peers_dropped: int
    bytes_by_peer: tuple[tuple[bytes, int], ...]


_ENDED = (SessionState.COMPLETE, SessionState.FAILED)
_LATE_INPUTS = (LocalBlocks, ProviderAdded, ProviderRemoved, FrameReceived, MessageReceived,
                BlockVerified, RequestFailed, TimerFired, Cancel)

_TRANSITIONS: dict[SessionState, dict[type, str]] = {
    SessionState.IDLE: {Start: "_on_start", ProviderAdded: "_on_provider_added",
                        ProviderRemoved: "_on_provider_removed", Cancel: "_on_cancel"},
    SessionState.ACTIVE: {
        LocalBlocks: "_on_local_blocks", ProviderAdded: "_on_provider_added",
        ProviderRemoved: "_on_provider_removed", FrameReceived: "_on_frame",
        MessageReceived: "_on_message", BlockVerified: "_on_block_verified",
        RequestFailed: "_on_request_failed",
        TimerFired: "_on_timer", Cancel: "_on_cancel"},
    SessionState.COMPLETE: {kind: "_ignore" for kind in _LATE_INPUTS},
    SessionState.FAILED: {kind: "_ignore" for kind in _LATE_INPUTS},
}


class FetchSession:
    """Fetch the DAG under ``root`` from the providers the shell adds (module rules)."""

    def __init__(self, root: Cid, config: SessionConfig | None = None) -> None:
        self.root = root
        self.config = config or SessionConfig()
        self.state = SessionState.IDLE
        self._blocks: dict[Cid, _BlockEntry] = {}
        self._wanted: deque[Cid] = deque()
        self._peers: dict[bytes, _Peer] = {}
        self._requests: dict[int, _Request] = {}
        self._next_request_id = 0
        self._total = TokenBucket(self.config.total_rate_bytes_per_s,
                                  self.config.total_burst_bytes)
        self._stalled = False
        self._bandwidth_timer_at: int | None = None
        self._fetched = self._duplicates = self._bytes = self._dropped = 0
        self._counts = dict.fromkeys(BlockState, 0)

    # -- the one entry point ----------------------------------------------------------

    def handle(self, now_ms: int, event: Input) -> list[Effect]:
        handler = _TRANSITIONS[self.state].get(type(event))
        if handler is None:
            raise SessionStateError(f"session {self.state.name} has no transition for "
                                    f"{type(event).__name__}")
        effects: list[Effect] = getattr(self, handler)(now_ms, event)
        if self.state is SessionState.ACTIVE:
            effects += self._schedule(now_ms)
            effects += self._check_finished()
        self._check_invariants()
        return effects

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            state=self.state, blocks_known=len(self._blocks),
            blocks_done=self._counts[BlockState.DONE], blocks_fetched=self._fetched,
            blocks_in_flight=self._counts[BlockState.IN_FLIGHT], bytes_received=self._bytes,
            duplicate_blocks=self._duplicates, providers=len(self._peers),
            peers_dropped=self._dropped,
            bytes_by_peer=tuple((peer, p.bytes_received) for peer, p in self._peers.items()))

    # -- handlers ---------------------------------------------------------------------

    def _ignore(self, now_ms: int, event: Input) -> list[Effect]:
        return []

    def _on_start(self, now_ms: int, event: Start) -> list[Effect]:
        self.state = SessionState.ACTIVE
        return self._discover((self.root,))

    def _on_cancel(self, now_ms: int, event: Cancel) -> list[Effect]:
        self.state = SessionState.FAILED
        return [Finished(root=self.root, complete=False, reason=event.reason)]

    def _on_provider_added(self, now_ms: int, event: ProviderAdded) -> list[Effect]:
        if event.peer in self._peers or len(self._peers) >= self.config.peers_max:
            return []
        self._peers[event.peer] = _Peer(TokenBucket(self.config.peer_rate_bytes_per_s,
                                                    self.config.peer_burst_bytes))
        self._stalled = False
        return []

    def _on_provider_removed(self, now_ms: int, event: ProviderRemoved) -> list[Effect]:
        self._remove_peer(event.peer)
        return []

    def _on_local_blocks(self, now_ms: int, event: LocalBlocks) -> list[Effect]:
        effects: list[Effect] = []
        for cid in event.missing:
            entry = self._blocks.get(cid)
            if entry is not None and entry.state is BlockState.LOCAL_CHECK:
                self._set_state(cid, entry, BlockState.WANTED)
        for cid, data in event.found:
            entry = self._blocks.get(cid)
            if entry is None or entry.state is not BlockState.LOCAL_CHECK:
                continue
            self._set_state(cid, entry, BlockState.DONE)
            if cid.codec == CODEC_DAG_PB:
                assert data is not None and cid.matches(data), "the shell must pass the node"
                effects += self._discover_children(cid, data)
        return effects

    def _on_frame(self, now_ms: int, event: FrameReceived) -> list[Effect]:
        if event.peer not in self._peers:
            return []
        try:
            message = decode_message(event.frame)
        except InvalidMessageError as error:
            return self._blame(event.peer, f"undecodable frame: {error}")
        return self._on_message(now_ms, MessageReceived(peer=event.peer, message=message))

    def _on_message(self, now_ms: int, event: MessageReceived) -> list[Effect]:
        if event.peer not in self._peers:
            return []  # a late message from a peer we already dropped
        message = event.message
        if isinstance(message, BlockReply):
            return self._on_block(now_ms, event.peer, message)
        if isinstance(message, DontHave):
            request = self._requests.get(message.request_id)
            if request is not None and request.peer == event.peer:
                for cid in message.cids:
                    if cid in request.outstanding:
                        self._blocks[cid].dont_have.add(event.peer)
                        self._release(message.request_id, cid)
            return []
        return self._blame(event.peer, "sent a want-list on a fetch stream")

    def _on_request_failed(self, now_ms: int, event: RequestFailed) -> list[Effect]:
        request = self._requests.get(event.request_id)
        if request is not None and request.peer == event.peer:
            for cid in list(request.outstanding):
                self._release(event.request_id, cid)
        return []

    def _on_timer(self, now_ms: int, event: TimerFired) -> list[Effect]:
        kind, number = event.timer
        if kind == "bandwidth":
            if self._bandwidth_timer_at is not None and now_ms >= self._bandwidth_timer_at:
                self._bandwidth_timer_at = None
            return []
        request = self._requests.get(number)
        if kind != "request" or request is None:
            return []
        for cid in list(request.outstanding):
            self._release(number, cid)
        peer = self._peers[request.peer]
        peer.strikes += 1
        if peer.strikes >= self.config.strikes_max:
            self._remove_peer(request.peer)
            self._dropped += 1
            return [DropPeer(peer=request.peer, reason="unresponsive", error=None)]
        return []

    # -- blocks -----------------------------------------------------------------------

    def _set_state(self, cid: Cid, entry: _BlockEntry, state: BlockState) -> None:
        self._counts[entry.state] -= 1
        self._counts[state] += 1
        entry.state = state
        if state is BlockState.WANTED:
            self._wanted.append(cid)

    def _on_block(self, now_ms: int, peer: bytes, message: BlockReply) -> list[Effect]:
        cid = message.cid
        if not self._solicited(peer, cid):
            return self._blame(peer, f"unsolicited block {cid}")
        if not cid.matches(message.data):
            return self._blame(peer, f"block does not match its CID {cid}")
        if not self._received(now_ms, peer, cid, len(message.data)):
            return []
        effects: list[Effect] = [StoreBlock(block=Block(cid, message.data))]
        if cid.codec == CODEC_DAG_PB:
            effects += self._discover_children(cid, message.data)
        return effects

    def _on_block_verified(self, now_ms: int, event: BlockVerified) -> list[Effect]:
        peer, cid = event.peer, event.cid
        if peer not in self._peers:
            return []  # a late block from a peer we already dropped: the shell discards it
        if not self._solicited(peer, cid):
            return self._blame(peer, f"unsolicited block {cid}")
        assert (event.data is not None) == (cid.codec == CODEC_DAG_PB), "a lane sends nodes"
        if not self._received(now_ms, peer, cid, event.size):
            return []
        effects: list[Effect] = [AdoptBlock(cid=cid, size=event.size, staged=event.staged)]
        if event.data is not None:
            effects += self._discover_children(cid, event.data)
        return effects

    def _solicited(self, peer: bytes, cid: Cid) -> bool:
        entry = self._blocks.get(cid)
        return entry is not None and peer in entry.asked

    def _received(self, now_ms: int, peer: bytes, cid: Cid, size: int) -> bool:
        """Account a verified block from ``peer``; True if it is new (now DONE), False for
        a duplicate (another peer's copy came first)."""
        entry = self._blocks[cid]
        self._peers[peer].bucket.charge(now_ms, size)
        self._peers[peer].bytes_received += size
        self._total.charge(now_ms, size)
        self._bytes += size
        if entry.state is BlockState.DONE:
            self._duplicates += 1
            if entry.request_id is not None:
                self._unclaim(entry.request_id, cid)
            return False
        if entry.state is BlockState.IN_FLIGHT:
            assert entry.request_id is not None
            self._unclaim(entry.request_id, cid)  # from whichever peer it was assigned to
        self._set_state(cid, entry, BlockState.DONE)
        self._fetched += 1
        return True

    def _discover_children(self, cid: Cid, data: bytes) -> list[Effect]:
        try:
            children = links_of(cid, data)
        except InvalidDagError as error:  # the bytes match the CID: the DAG itself is bad
            self.state = SessionState.FAILED
            return [Finished(root=self.root, complete=False, reason=f"invalid DAG: {error}")]
        return self._discover(children)

    def _discover(self, cids: tuple[Cid, ...]) -> list[Effect]:
        if self.state is not SessionState.ACTIVE:
            return []
        new = [cid for cid in dict.fromkeys(cids) if cid not in self._blocks]
        if len(self._blocks) + len(new) > self.config.blocks_max:
            self.state = SessionState.FAILED
            return [Finished(root=self.root, complete=False,
                             reason=f"DAG has more than {self.config.blocks_max} blocks")]
        for cid in new:
            self._blocks[cid] = _BlockEntry(BlockState.LOCAL_CHECK)
            self._counts[BlockState.LOCAL_CHECK] += 1
        return [ReadLocal(cids=tuple(new))] if new else []

    def _unclaim(self, request_id: int, cid: Cid) -> None:
        """Remove ``cid`` from a request's outstanding set (answered, refused or lost)."""
        request = self._requests[request_id]
        request.outstanding.discard(cid)
        self._peers[request.peer].in_flight -= 1
        if not request.outstanding:
            del self._requests[request_id]
        self._blocks[cid].request_id = None

    def _release(self, request_id: int, cid: Cid) -> None:
        """Give an in-flight block back to the WANTED queue."""
        entry = self._blocks[cid]
        assert entry.state is BlockState.IN_FLIGHT and entry.request_id == request_id
        self._unclaim(request_id, cid)
        self._set_state(cid, entry, BlockState.WANTED)

    # -- peers ------------------------------------------------------------------------

    def _remove_peer(self, peer: bytes) -> None:
        if peer not in self._peers:
            return
        for request_id, request in list(self._requests.items()):
            if request.peer == peer:
                for cid in list(request.outstanding):
                    self._release(request_id, cid)
        del self._peers[peer]

    def _blame(self, peer: bytes, reason: str) -> list[Effect]:
        self._remove_peer(peer)
        self._dropped += 1
        return [DropPeer(peer=peer, reason=reason, error=PeerProtocolError(peer, reason))]

    # -- scheduling -------------------------------------------------------------------

    def _available_peers(self, now_ms: int) -> list[bytes]:
        if not self._total.ready(now_ms):
            return []
        limit = self.config.in_flight_per_peer_max
        return [peer for peer, state in self._peers.items()
                if state.in_flight < limit and state.bucket.ready(now_ms)]

    def _assign(self, now_ms: int) -> dict[bytes, list[Cid]]:
        """Give WANTED blocks to the least-loaded peers that can take them (rule 3)."""
        available = self._available_peers(now_ms)
        batches: dict[bytes, list[Cid]] = {}
        limit = self.config.in_flight_per_peer_max
        for _ in range(len(self._wanted)):
            if not available:
                break
            cid = self._wanted.popleft()
            entry = self._blocks[cid]
            if entry.state is not BlockState.WANTED:
                continue  # a stale queue entry: it arrived late from an earlier request
            candidates = [peer for peer in available if peer not in entry.dont_have]
            if not candidates:
                self._wanted.append(cid)
                continue
            peer = min(candidates, key=lambda p: self._peers[p].in_flight)
            self._counts[BlockState.WANTED] -= 1
            self._counts[BlockState.IN_FLIGHT] += 1
            entry.state = BlockState.IN_FLIGHT
            entry.asked.add(peer)
            batches.setdefault(peer, []).append(cid)
            self._peers[peer].in_flight += 1
            if self._peers[peer].in_flight >= limit:
                available.remove(peer)
        return batches

    def _schedule(self, now_ms: int) -> list[Effect]:
        effects: list[Effect] = []
        for peer, cids in self._assign(now_ms).items():
            request_id = self._next_request_id
            self._next_request_id += 1
            self._requests[request_id] = _Request(peer, set(cids))
            for cid in cids:
                self._blocks[cid].request_id = request_id
            effects.append(SendWant(peer=peer, message=WantBlocks(request_id=request_id,
                                                                  cids=tuple(cids))))
            effects.append(SetTimer(timer=("request", request_id),
                                    at_ms=now_ms + self.config.request_timeout_ms))
        if self._counts[BlockState.WANTED] == 0:
            return effects
        waits = [self._total.ready_at_ms(now_ms)]
        waits += [state.bucket.ready_at_ms(now_ms) for state in self._peers.values()]
        ready_at = max(waits[0], min(waits[1:], default=now_ms))
        if ready_at > now_ms and self._peers:
            if self._bandwidth_timer_at is None or ready_at < self._bandwidth_timer_at:
                self._bandwidth_timer_at = ready_at
                effects.append(SetTimer(timer=("bandwidth", 0), at_ms=ready_at))
        elif not self._requests and self._counts[BlockState.LOCAL_CHECK] == 0 \
                and not self._stalled:
            self._stalled = True
            effects.append(NeedProviders(root=self.root,
                                         wanted_count=self._counts[BlockState.WANTED]))
        return effects

    def _check_finished(self) -> list[Effect]:
        if any(self._counts[state] for state in
               (BlockState.LOCAL_CHECK, BlockState.WANTED, BlockState.IN_FLIGHT)):
            return []
        self.state = SessionState.COMPLETE
        return [Finished(root=self.root, complete=True, reason="complete")]

    def _check_invariants(self) -> None:
        in_flight: dict[bytes, int] = {}
        for request_id, request in self._requests.items():
            assert request.outstanding and request.peer in self._peers
            in_flight[request.peer] = in_flight.get(request.peer, 0) + len(request.outstanding)
            for cid in request.outstanding:
                entry = self._blocks[cid]
                assert entry.state is BlockState.IN_FLIGHT and entry.request_id == request_id
        for peer, state in self._peers.items():
            assert state.in_flight == in_flight.get(peer, 0)
            assert state.in_flight <= self.config.in_flight_per_peer_max
        assert sum(self._counts.values()) == len(self._blocks)
        assert self._counts[BlockState.IN_FLIGHT] == sum(in_flight.values())
