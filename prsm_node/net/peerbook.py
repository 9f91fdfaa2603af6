"""The peer book: which peers we know, which are connected, and when to dial whom.

A pure core (STYLE.md rule 1): it never reads a clock, a socket or randomness; `now_ms` and
a seeded `random.Random` come in, and `due_dials()` returns what to dial. The shell
(`prsm_node.net.peers`) performs the dials and reports back with `dial_failed`,
`connected` and `disconnected`.

Rules and invariants:
1. Bootstrap peers are never forgotten: they are redialled for ever, with the backoff.
2. A learned peer is forgotten after `dial_attempts_max` failed dials in a row.
3. Backoff after n failures: `initial * 2**(n-1)`, capped at `max`, with up to 25% random
   jitter so a restarted node's peers do not all redial in the same instant.
4. At most `known_peers_max` entries. A new address past the cap replaces the learned,
   unconnected entry with the most failures (then the oldest); if there is none it is
   dropped. Our own peer id is never an entry.
5. At most `peers_max` connections, counting dials in flight: `due_dials` stops there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class PeerState(Enum):
    IDLE = "idle"
    DIALING = "dialing"
    CONNECTED = "connected"


@dataclass(slots=True)
class PeerEntry:
    peer_id: str
    address: str  # a full multiaddr ending in /p2p/<peer_id>
    bootstrap: bool
    state: PeerState = PeerState.IDLE
    failures: int = 0
    next_dial_ms: int = 0
    last_seen_ms: int = 0


def peer_id_of_address(address: str) -> str:
    """The peer id after /p2p/ in a multiaddr; ValueError if there is none."""
    head, separator, peer_id = address.rpartition("/p2p/")
    if not separator or not head or not peer_id or "/" in peer_id:
        raise ValueError(f"multiaddr {address!r} does not end in /p2p/<peer id>")
    return peer_id


class PeerBook:
    def __init__(
        self,
        *,
        self_peer_id: str,
        known_peers_max: int,
        peers_max: int,
        backoff_initial_ms: int,
        backoff_max_ms: int,
        dial_attempts_max: int,
        rng: random.Random,
    ) -> None:
        self._self_peer_id = self_peer_id
        self._known_peers_max = known_peers_max
        self._peers_max = peers_max
        self._backoff_initial_ms = backoff_initial_ms
        self._backoff_max_ms = backoff_max_ms
        self._dial_attempts_max = dial_attempts_max
        self._rng = rng
        self._entries: dict[str, PeerEntry] = {}
        self._connected_unknown: set[str] = set()  # inbound peers whose address we lack

    # -- inputs ------------------------------------------------------------------------

    def add_bootstrap(self, address: str) -> None:
        peer_id = peer_id_of_address(address)
        if peer_id == self._self_peer_id:
            return
        entry = self._entries.get(peer_id)
        if entry is None:
            if not self._make_room():
                self._evict_any_learned()
            entry = self._entries[peer_id] = PeerEntry(peer_id, address, bootstrap=True)
            self._connected_unknown.discard(peer_id)
        entry.bootstrap = True
        entry.address = address

    def learn(self, address: str, now_ms: int) -> bool:
        """Remember a peer's address (from peer exchange or peers.json); True if kept."""
        peer_id = peer_id_of_address(address)
        if peer_id == self._self_peer_id:
            return False
        entry = self._entries.get(peer_id)
        if entry is not None:
            if not entry.bootstrap:
                entry.address = address
            return True
        if not self._make_room():
            return False
        state = PeerState.CONNECTED if peer_id in self._connected_unknown else PeerState.IDLE
        self._connected_unknown.discard(peer_id)
        self._entries[peer_id] = PeerEntry(
            peer_id, address, bootstrap=False, state=state, last_seen_ms=now_ms
        )
        return True

    def connected(self, peer_id: str, now_ms: int) -> None:
        entry = self._entries.get(peer_id)
        if entry is None:
            if peer_id != self._self_peer_id and len(self._connected_unknown) < self._peers_max:
                self._connected_unknown.add(peer_id)
            return
        entry.state = PeerState.CONNECTED
        entry.failures = 0
        entry.last_seen_ms = now_ms

    def disconnected(self, peer_id: str, now_ms: int) -> None:
        """The connection dropped: redial after the first backoff step."""
        self._connected_unknown.discard(peer_id)
        entry = self._entries.get(peer_id)
        if entry is None or entry.state is not PeerState.CONNECTED:
            return
        entry.state = PeerState.IDLE
        entry.last_seen_ms = now_ms
        entry.next_dial_ms = now_ms + self._backoff_ms(1)

    def dial_failed(self, peer_id: str, now_ms: int) -> None:
        entry = self._entries.get(peer_id)
        if entry is None or entry.state is not PeerState.DIALING:
            return
        entry.state = PeerState.IDLE
        entry.failures += 1
        if not entry.bootstrap and entry.failures >= self._dial_attempts_max:
            del self._entries[peer_id]
            return
        entry.next_dial_ms = now_ms + self._backoff_ms(entry.failures)

    # -- outputs -----------------------------------------------------------------------

    def due_dials(self, now_ms: int) -> list[tuple[str, str]]:
        """(peer id, address) pairs to dial now; they are marked DIALING."""
        budget = self._peers_max - self.connection_count() - self._dialing_count()
        due = []
        for entry in sorted(self._entries.values(), key=lambda item: item.next_dial_ms):
            if budget <= 0 or entry.next_dial_ms > now_ms:
                break
            if entry.state is PeerState.IDLE:
                entry.state = PeerState.DIALING
                due.append((entry.peer_id, entry.address))
                budget -= 1
        return due

    def next_dial_ms(self) -> int | None:
        """When the earliest idle peer becomes due, or None if none is waiting."""
        times = [e.next_dial_ms for e in self._entries.values() if e.state is PeerState.IDLE]
        return min(times, default=None)

    def connection_count(self) -> int:
        connected = sum(e.state is PeerState.CONNECTED for e in self._entries.values())
        return connected + len(self._connected_unknown)

    def _dialing_count(self) -> int:
        return sum(entry.state is PeerState.DIALING for entry in self._entries.values())

    def address_of(self, peer_id: str) -> str | None:
        entry = self._entries.get(peer_id)
        return entry.address if entry else None

    def connected_addresses(self) -> list[str]:
        return [e.address for e in self._entries.values() if e.state is PeerState.CONNECTED]

    def snapshot(self) -> list[dict[str, object]]:
        """What peers.json keeps: every known address and whether it is a bootstrap peer.

        Times are left out: `now_ms` is a monotonic clock that means nothing after restart.
        """
        return [
            {"address": e.address, "bootstrap": e.bootstrap}
            for e in sorted(self._entries.values(), key=lambda item: item.peer_id)
        ]

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ---------------------------------------------------------------------

    def _backoff_ms(self, failures: int) -> int:
        base = min(self._backoff_max_ms, self._backoff_initial_ms * 2 ** min(failures - 1, 30))
        return base + self._rng.randrange(base // 4 + 1)

    def _evict_any_learned(self) -> None:
        """Room for a bootstrap peer (config guarantees there are at most known_peers_max)."""
        victim = next(entry for entry in self._entries.values() if not entry.bootstrap)
        del self._entries[victim.peer_id]
        if victim.state is PeerState.CONNECTED:
            self._connected_unknown.add(victim.peer_id)

    def _make_room(self) -> bool:
        if len(self._entries) < self._known_peers_max:
            return True
        candidates = [
            entry
            for entry in self._entries.values()
            if not entry.bootstrap and entry.state is PeerState.IDLE
        ]
        if not candidates:
            return False
        victim = max(candidates, key=lambda item: (item.failures, -item.last_seen_ms))
        del self._entries[victim.peer_id]
        return True
