"""The iterative Kademlia lookup as a state machine (one Enum, one transition table).

Rules:
1. All that moves a lookup between states is in this file: ``TRANSITIONS`` maps
   state -> {event -> next state}; a pair missing from it raises ``LookupStateError``
   naming both (h11's ``_state.py`` pattern).
2. The lookup sends nothing itself. Its methods return the peers to query next; the node
   core turns them into requests, timers and, later, inputs (``on_response``,
   ``on_failure``, ``on_deadline``). It never reads a clock: times are passed in.
3. Bounded: at most ``alpha`` requests in flight (libp2p Kademlia spec, alpha = 3), at most
   ``candidates_max`` candidates remembered (the farthest are forgotten first, and since
   candidates only ever get closer, a forgotten peer is never wanted again), and a deadline
   after which the lookup stops and reports what it found (``LookupState.DEADLINE``).

Theory of operation (Kademlia paper §2.3, libp2p spec "Peer routing"). Candidates are kept
sorted by XOR distance to the target. Each step walks the closest ``k`` candidates that have
not failed: if all of them answered, the lookup has converged; otherwise it queries the
closest unqueried ones until ``alpha`` requests are in flight. Responses add the peers they
name as candidates. A failed request puts the peer back as a candidate until it has been
tried ``attempts_max`` times; then it is failed for this lookup. GET_VALUE also stops once
``quorum`` peers returned a valid record, and reports the best record (highest
``(seq, expires_at_ms)``), the closest peers that lacked it and those holding an older
version (so the node can store the best one on them, §2.3 caching). GET_PROVIDERS stops
once ``providers_max`` distinct providers are known.

Rounds: seeds are round 1; a peer first named in a response from a round-r peer is round
r + 1. ``rounds`` is the largest round among peers that answered: the number of iterative
hops the lookup needed.
"""

from __future__ import annotations

import enum
from bisect import insort
from collections.abc import Iterable
from dataclasses import dataclass

from dht.errors import LookupStateError
from dht.peer import PeerInfo
from dht.records import SignedRecord

ALPHA = 3
"""Requests in flight per lookup (libp2p Kademlia spec and paper §2.3: alpha = 3)."""

ATTEMPTS_MAX = 2
"""Requests per peer per lookup. One lost message must not hide the closest peer: with 1%
loss each way a single try fails 2% of the time, two tries 0.04%. A dead peer costs one
more timeout, spent in parallel with other requests."""

CANDIDATES_MAX = 200
"""Candidates remembered per lookup: 10 k. A converging lookup needs the k closest plus a
frontier; more only costs memory."""


class LookupKind(enum.Enum):
    FIND_NODE = "find_node"
    GET_VALUE = "get_value"
    GET_PROVIDERS = "get_providers"


class LookupState(enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"  # converged: the k closest reachable peers all answered
    FOUND = "found"  # stopped early: value quorum or provider limit reached
    DEADLINE = "deadline"  # stopped by the deadline, with what it had


class LookupEvent(enum.Enum):
    RESPONSE = "response"
    FAILURE = "failure"
    CONVERGED = "converged"
    FOUND_ENOUGH = "found_enough"
    DEADLINE = "deadline"


TRANSITIONS: dict[LookupState, dict[LookupEvent, LookupState]] = {
    LookupState.RUNNING: {
        LookupEvent.RESPONSE: LookupState.RUNNING,
        LookupEvent.FAILURE: LookupState.RUNNING,
        LookupEvent.CONVERGED: LookupState.COMPLETED,
        LookupEvent.FOUND_ENOUGH: LookupState.FOUND,
        LookupEvent.DEADLINE: LookupState.DEADLINE,
    },
    LookupState.COMPLETED: {},
    LookupState.FOUND: {},
    LookupState.DEADLINE: {},
}


class _PeerState(enum.Enum):
    CANDIDATE = "candidate"
    WAITING = "waiting"
    ANSWERED = "answered"
    FAILED = "failed"


class _Candidate:
    __slots__ = ("attempts", "distance", "peer", "round", "state")

    def __init__(self, peer: PeerInfo, distance: int, round_: int) -> None:
        self.attempts = 0
        self.peer = peer
        self.distance = distance
        self.round = round_
        self.state = _PeerState.CANDIDATE


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    kind: LookupKind
    key: bytes
    target: int
    outcome: LookupState
    closest: tuple[PeerInfo, ...]  # up to k peers that answered, closest first
    record: SignedRecord | None
    records_found: int
    peers_without_value: tuple[PeerInfo, ...]  # answered without the record, closest first
    peers_outdated: tuple[PeerInfo, ...]  # answered with an older version than ``record``
    providers: tuple[PeerInfo, ...]
    rounds: int
    peers_contacted: int  # requests sent, retries included
    peers_failed: int  # requests that failed or timed out
    started_ms: int
    finished_ms: int

    @property
    def completed(self) -> bool:
        """True unless the deadline cut the lookup short."""
        return self.outcome is not LookupState.DEADLINE


class Lookup:
    """One iterative lookup; see the module header."""

    def __init__(
        self,
        *,
        kind: LookupKind,
        target: int,
        key: bytes,
        own_id: bytes,
        seeds: Iterable[PeerInfo],
        started_ms: int,
        k: int = 20,
        alpha: int = ALPHA,
        candidates_max: int = CANDIDATES_MAX,
        attempts_max: int = ATTEMPTS_MAX,
        quorum: int = 1,
        providers_max: int = 20,
    ) -> None:
        if not (1 <= alpha <= k <= candidates_max) or quorum < 1 or providers_max < 1:
            raise ValueError("need 1 <= alpha <= k <= candidates_max, quorum, providers >= 1")
        self.kind = kind
        self.target = target
        self.key = key
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.candidates_max = candidates_max
        self.attempts_max = attempts_max
        self.quorum = quorum
        self.providers_max = providers_max
        self.started_ms = started_ms
        self.state = LookupState.RUNNING
        self._candidates: dict[bytes, _Candidate] = {}
        self._order: list[tuple[int, bytes, _Candidate]] = []  # (distance, id) are unique
        self._in_flight: set[bytes] = set()
        self._record: SignedRecord | None = None
        self._record_holders: dict[bytes, tuple[int, int]] = {}  # peer id -> version
        self._providers: dict[bytes, PeerInfo] = {}
        self.peers_contacted = 0
        self.peers_failed = 0
        self._add_candidates(seeds, 1)

    # -- inputs ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def done(self) -> bool:
        return self.state is not LookupState.RUNNING

    def start(self) -> list[PeerInfo]:
        """The first peers to query (up to alpha); may converge at once on an empty table."""
        self._require(LookupEvent.RESPONSE)
        return self._step()

    def on_response(
        self,
        peer: PeerInfo,
        closer: Iterable[PeerInfo],
        *,
        record: SignedRecord | None = None,
        providers: Iterable[PeerInfo] = (),
    ) -> list[PeerInfo]:
        """``peer`` answered (``record`` already validated by the caller); next peers to ask."""
        self._transition(LookupEvent.RESPONSE)
        candidate = self._candidates.get(peer.peer_id)
        round_ = 1
        if peer.peer_id in self._in_flight:
            self._in_flight.discard(peer.peer_id)
        if candidate is not None:
            candidate.state = _PeerState.ANSWERED
            round_ = candidate.round
        self._add_candidates(closer, round_ + 1)
        if self.kind is LookupKind.GET_VALUE:
            self._take_record(peer, record)
        elif self.kind is LookupKind.GET_PROVIDERS:
            for provider in providers:
                if len(self._providers) < self.providers_max:
                    self._providers.setdefault(provider.peer_id, provider)
        if self._found_enough():
            self._transition(LookupEvent.FOUND_ENOUGH)
            return []
        return self._step()

    def on_failure(self, peer_id: bytes) -> list[PeerInfo]:
        """A request failed or timed out; next peers to ask."""
        self._transition(LookupEvent.FAILURE)
        if peer_id in self._in_flight:
            self._in_flight.discard(peer_id)
            self.peers_failed += 1
        candidate = self._candidates.get(peer_id)
        if candidate is not None and candidate.state is _PeerState.WAITING:
            retry = candidate.attempts < self.attempts_max
            candidate.state = _PeerState.CANDIDATE if retry else _PeerState.FAILED
        return self._step()

    def add_local_record(self, record: SignedRecord) -> None:
        """Offer our own stored copy as a best-record candidate (it does not count towards
        the quorum: the point of the lookup is to hear from the network)."""
        self._require(LookupEvent.RESPONSE)
        better = self._record is None or record.body.version > self._record.body.version
        if record.body.key == self.key and better:
            self._record = record

    def add_local_providers(self, providers: tuple[PeerInfo, ...]) -> None:
        """Offer the provider records we store ourselves (we may be one of the k closest)."""
        self._require(LookupEvent.RESPONSE)
        for provider in providers:
            if len(self._providers) < self.providers_max:
                self._providers.setdefault(provider.peer_id, provider)

    def on_deadline(self) -> None:
        self._transition(LookupEvent.DEADLINE)

    # -- result ----------------------------------------------------------------------------

    def result(self, now_ms: int) -> LookupResult:
        if not self.done:
            raise LookupStateError(f"result() asked in state {self.state.name}")
        answered = [c for _, c in self._sorted() if c.state is _PeerState.ANSWERED]
        best = self._record
        lacking, outdated = [], []
        for candidate in answered:
            version = self._record_holders.get(candidate.peer.peer_id)
            if version is None:
                lacking.append(candidate.peer)
            elif best is not None and version < best.body.version:
                outdated.append(candidate.peer)
        return LookupResult(
            kind=self.kind,
            key=self.key,
            target=self.target,
            outcome=self.state,
            closest=tuple(c.peer for c in answered[: self.k]),
            record=best,
            records_found=len(self._record_holders),
            peers_without_value=tuple(lacking[: self.k]),
            peers_outdated=tuple(outdated[: self.k]),
            providers=tuple(self._providers.values()),
            rounds=max((c.round for c in answered), default=0),
            peers_contacted=self.peers_contacted,
            peers_failed=self.peers_failed,
            started_ms=self.started_ms,
            finished_ms=now_ms,
        )

    # -- internals -------------------------------------------------------------------------

    def _require(self, event: LookupEvent) -> LookupState:
        next_state = TRANSITIONS[self.state].get(event)
        if next_state is None:
            raise LookupStateError(
                f"lookup {self.kind.name}: no transition for {event.name} "
                f"in state {self.state.name}"
            )
        return next_state

    def _transition(self, event: LookupEvent) -> None:
        self.state = self._require(event)

    def _sorted(self) -> Iterable[tuple[int, _Candidate]]:
        return ((distance, candidate) for distance, _, candidate in self._order)

    def _add_candidates(self, peers: Iterable[PeerInfo], round_: int) -> None:
        for peer in peers:
            if peer.peer_id == self.own_id:
                continue
            known = self._candidates.get(peer.peer_id)
            if known is not None:
                known.round = min(known.round, round_)
                continue
            distance = peer.key ^ self.target
            if len(self._order) >= self.candidates_max and distance >= self._order[-1][0]:
                continue  # farther than everything kept: it would be forgotten at once
            candidate = self._candidates[peer.peer_id] = _Candidate(peer, distance, round_)
            insort(self._order, (distance, peer.peer_id, candidate))
            if len(self._order) > self.candidates_max:
                _, dropped, _ = self._order.pop()
                del self._candidates[dropped]

    def _step(self) -> list[PeerInfo]:
        """Query the closest unqueried peers among the k closest live ones, or converge."""
        to_query: list[_Candidate] = []
        pending = False
        live = 0
        for _, _, candidate in self._order:
            if candidate.state is _PeerState.FAILED:
                continue
            live += 1
            if candidate.state is _PeerState.CANDIDATE:
                pending = True
                if len(self._in_flight) + len(to_query) < self.alpha:
                    to_query.append(candidate)
            elif candidate.state is _PeerState.WAITING:
                pending = True
            if live >= self.k:
                break
        if not pending and not (live == 0 and self._in_flight):
            self._transition(LookupEvent.CONVERGED)
            return []
        for candidate in to_query:
            candidate.state = _PeerState.WAITING
            candidate.attempts += 1
            self._in_flight.add(candidate.peer.peer_id)
        self.peers_contacted += len(to_query)
        assert len(self._in_flight) <= self.alpha
        return [candidate.peer for candidate in to_query]

    def _take_record(self, peer: PeerInfo, record: SignedRecord | None) -> None:
        if record is None or record.body.key != self.key:
            return
        self._record_holders[peer.peer_id] = record.body.version
        if self._record is None or record.body.version > self._record.body.version:
            self._record = record

    def _found_enough(self) -> bool:
        if self.kind is LookupKind.GET_VALUE:
            return len(self._record_holders) >= self.quorum
        if self.kind is LookupKind.GET_PROVIDERS:
            return len(self._providers) >= self.providers_max
        return False
