"""The peer manager: drives the peer book over the real host (dials, connection events,
ping, peer exchange) and keeps peers.json.

Rules:
1. Every dial runs under `dial_timeout_ms`; its outcome goes back to the book, which owns
   the backoff. A sleeping loop wakes early when an event may have made a dial due.
2. The connection limit is `peers_max`: libp2p's swarm rejects inbound connections past it
   before the handshake, and we close at once any that slips through (the swarm counts
   connections racily) or that comes from a peer whose score is at the floor.
3. Pings and peer exchange are paced: each round visits the connected peers one at a time,
   spread evenly over the interval, and a node's first round starts at a random point of
   its first interval. Sending a round to every peer at once made each node's requests
   (and, a network started together, every node's) land in the same few seconds: on the
   30-node registry devnet (2 cores, pings and peer exchange every 60 s) every node was
   slow for 12-18 s once a minute and gossip published meanwhile took seconds to arrive;
   with both every 10 min that window did not appear (BENCHMARKS.md, registry, session 4).
4. peers.json is written atomically (temp file, fsync, rename) at most every
   PERSIST_INTERVAL_S and at shutdown; a corrupt file is logged and ignored, never fatal.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError

from prsm_node.config import NetworkConfig
from prsm_node.errors import PeerProtocolError
from prsm_node.net import pex
from prsm_node.net.host import ConnectionEvent, dial, dial_first
from prsm_node.net.peerbook import PeerBook
from prsm_node.net.ping import PING_PROTOCOL, LatencyTable, answer_ping
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import RequestFailed, Wire

log = structlog.get_logger(__name__)

PERSIST_INTERVAL_S = 2.0
REACH_ADDRESSES_MAX = 8  # as dht.peer.ADDRS_MAX: addresses a peer record carries
IDLE_WAKE_S = 1.0


@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: str
    addrs: list[str]
    direction: str
    latency_ms: float | None


class PeerManager:
    def __init__(
        self,
        *,
        host: Any,
        wire: Wire,
        scores: PeerScores,
        config: NetworkConfig,
        peers_file: Path,
        rng: random.Random,
    ) -> None:
        self._host = host
        self._wire = wire
        self._scores = scores
        self._config = config
        self._peers_file = peers_file
        self._self_peer_id = host.get_id().to_base58()
        self.book = PeerBook(
            self_peer_id=self._self_peer_id,
            known_peers_max=config.known_peers_max,
            peers_max=config.peers_max,
            backoff_initial_ms=config.dial_backoff_initial_ms,
            backoff_max_ms=config.dial_backoff_max_ms,
            dial_attempts_max=config.dial_attempts_max,
            rng=rng,
        )
        self.latency = LatencyTable(rng)
        self._rng = rng
        self._directions: dict[str, str] = {}
        self._wake = trio.Event()
        self._dirty = False
        self.connections_refused = 0
        self.dials_failed = 0
        # Churn, all time: a healthy network opens each connection once and keeps it.
        self.dials = 0
        self.connections_opened = 0
        self.connections_closed = 0
        self.peers_lost = 0  # the last connection to a peer closed
        self.connection_listeners: list[Callable[[str, str], None]] = []
        self._nursery: trio.Nursery | None = None
        # Set once the host listens (the daemon starts `run` then): a dial made earlier
        # would show the peer no listen address in identify, so every dial waits for it.
        self._online = trio.Event()
        # Registered now, not in `run`: every protocol is served before the host listens.
        wire.register(PING_PROTOCOL, answer_ping)
        wire.register(pex.PEX_PROTOCOL, self._answer_pex)
        scores.on_drop = self._drop_peer

    # -- start-up ----------------------------------------------------------------------

    def own_addresses(self) -> list[str]:
        return [str(address) for address in self._host.get_addrs()]

    def load(self) -> None:
        """Bootstrap addresses from the config, then what peers.json remembers."""
        for address in self._config.bootstrap:
            self.book.add_bootstrap(address)
        for address in self._read_peers_file():
            try:
                self.book.learn(address, now_ms=0)
            except ValueError:
                log.warning("peers.file_entry_ignored", file=str(self._peers_file))

    def _read_peers_file(self) -> list[str]:
        try:
            entries = json.loads(self._peers_file.read_text(encoding="utf-8"))
            return [entry["address"] for entry in entries if isinstance(entry["address"], str)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError) as error:
            log.warning("peers.file_unreadable", file=str(self._peers_file), error=str(error))
            return []

    async def run(
        self,
        events: trio.MemoryReceiveChannel[ConnectionEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._online.set()
            nursery.start_soon(self._consume_events, events)
            nursery.start_soon(self._dial_loop)
            nursery.start_soon(self._ping_loop)
            nursery.start_soon(self._persist_loop)
            if self._config.peer_exchange:
                nursery.start_soon(self._pex_loop)
            task_status.started()

    # -- dialing -----------------------------------------------------------------------

    async def _dial_loop(self) -> None:
        while True:
            for peer_id, address in self.book.due_dials(_now_ms()):
                self._nursery_or_fail().start_soon(self._dial, peer_id, address)
            due = self.book.next_dial_ms()
            wait_s = IDLE_WAKE_S if due is None else max(0.0, (due - _now_ms()) / 1000)
            with trio.move_on_after(min(wait_s, IDLE_WAKE_S)):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _dial(self, peer_id: str, address: str) -> None:
        self.dials += 1
        with trio.move_on_after(self._config.dial_timeout_ms / 1000):
            try:
                await dial(self._host, address)
                log.info("peers.dialled", peer=peer_id, address=address)
                self.book.connected(peer_id, _now_ms())
                return
            except Exception as error:  # libp2p raises many unrelated types for a failed dial
                log.debug("peers.dial_failed", peer=peer_id, address=address, error=str(error))
        self.dials_failed += 1
        self.book.dial_failed(peer_id, _now_ms())
        self._wake.set()

    async def connect(self, address: str) -> str:
        """Dial `address` now (the control API's peers_connect); returns the peer id."""
        await self._online.wait()
        with trio.fail_after(self._config.dial_timeout_ms / 1000):
            peer_id = await dial(self._host, address)
        self.book.learn(address, _now_ms())
        self.book.connected(peer_id, _now_ms())
        self._dirty = True
        return peer_id

    async def reach(
        self, peer: str, addresses: list[str] | tuple[str, ...], *, remember: bool
    ) -> bool:
        """Connected to `peer` already, or dialled through one of `addresses` (at most
        REACH_ADDRESSES_MAX, each under the dial timeout); `remember` keeps the address that
        worked in the peer book, so the peer is redialled if the connection drops."""
        await self._online.wait()
        if self._host.get_network().get_connections(ID.from_base58(peer)):
            return True
        address = await dial_first(self._host, peer, addresses[:REACH_ADDRESSES_MAX],
                                   timeout_s=self.dial_timeout_s)
        if address is not None and remember:
            self.book.learn(address, _now_ms())
        return address is not None

    # -- connection events -------------------------------------------------------------

    async def _consume_events(self, events: trio.MemoryReceiveChannel[ConnectionEvent]) -> None:
        async for event in events:
            if event.connected:
                self.connections_opened += 1
                await self._on_connected(event)
            else:
                self.connections_closed += 1
                self._on_disconnected(event)

    async def _on_connected(self, event: ConnectionEvent) -> None:
        peer = event.peer_id
        over_limit = len(self._host.get_network().get_connections_map()) > self._config.peers_max
        if self._scores.is_banned(peer) or (event.direction == "inbound" and over_limit):
            log.info("peers.refused", peer=peer, banned=self._scores.is_banned(peer))
            self.connections_refused += 1
            self._nursery_or_fail().start_soon(self._close_connection, event.connection)
            return
        self._directions[peer] = event.direction
        self.book.connected(peer, _now_ms())
        log.info("peers.connected", peer=peer, direction=event.direction)
        for listener in self.connection_listeners:
            listener(peer, event.direction)
        self._nursery_or_fail().start_soon(self._ping, peer)
        if self._config.peer_exchange:
            self._nursery_or_fail().start_soon(self._exchange_peers, peer)

    def _on_disconnected(self, event: ConnectionEvent) -> None:
        peer = event.peer_id
        if self._host.get_network().get_connections(ID.from_base58(peer)):
            return  # another connection to the peer is still up
        self.peers_lost += 1
        self._directions.pop(peer, None)
        self.latency.forget(peer)
        self._wire.forget_peer(peer)
        self.book.disconnected(peer, _now_ms())
        log.info("peers.disconnected", peer=peer)
        self._wake.set()

    async def _close_connection(self, connection: Any) -> None:
        try:
            await connection.close()
        except Exception as error:  # closing a half-open libp2p connection raises varied types
            log.debug("peers.close_failed", error=str(error))

    @property
    def dial_timeout_s(self) -> float:
        return self._config.dial_timeout_ms / 1000

    def penalise(self, peer: str, reason: str) -> None:
        """Count a peer's bad input (other services than the wire report here)."""
        self._scores.penalise(peer, reason)

    def drop_peer(self, peer: str, reason: str) -> None:
        log.warning("peers.dropping", peer=peer, reason=reason)
        self._drop_peer(peer)

    def _drop_peer(self, peer: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, peer)

    async def _disconnect(self, peer: str) -> None:
        try:
            await self._host.disconnect(ID.from_base58(peer))
        except Exception as error:  # see _close_connection
            log.debug("peers.disconnect_failed", peer=peer, error=str(error))

    # -- ping and peer exchange --------------------------------------------------------

    async def _ping_loop(self) -> None:
        await self._paced_rounds(self._config.ping_interval_ms / 1000, self._ping)

    async def _paced_rounds(
        self, interval_s: float, visit: Callable[[str], Awaitable[object]]
    ) -> None:
        """Rule 3: every `interval_s`, `visit` each connected peer, one at a time, spread
        evenly over the interval (a peer that left meanwhile is skipped)."""
        await trio.sleep(self._rng.uniform(0, interval_s))
        while True:
            peers = list(self._directions)
            for delay_s in pacing_delays(len(peers), interval_s) or [interval_s]:
                if peers:
                    peer = peers.pop()
                    if peer in self._directions:
                        self._nursery_or_fail().start_soon(visit, peer)
                await trio.sleep(delay_s)

    async def _ping(self, peer: str) -> float | None:
        nonce = self.latency.new_nonce()
        started = trio.current_time()
        try:
            answer = await self._wire.request(peer, PING_PROTOCOL, {"nonce": nonce})
        except RequestFailed as error:
            log.debug("peers.ping_failed", peer=peer, reason=error.reason)
            return None
        if answer != {"nonce": nonce}:
            self._scores.penalise(peer, "ping: answer does not echo the nonce")
            return None
        rtt_ms = (trio.current_time() - started) * 1000
        self.latency.record(peer, rtt_ms)
        return rtt_ms

    async def ping(self, peer: str) -> float | None:
        return await self._ping(peer)

    async def _pex_loop(self) -> None:
        await self._paced_rounds(
            self._config.peer_exchange_interval_ms / 1000, self._exchange_peers
        )

    async def _exchange_peers(self, peer: str) -> None:
        try:
            answer = await self._wire.request(
                peer, pex.PEX_PROTOCOL, {"addrs": self.own_addresses()}
            )
            own, others = pex.parse_answer(peer, answer, self._config.peer_exchange_addrs_max)
        except RequestFailed as error:
            log.debug("peers.pex_failed", peer=peer, reason=error.reason)
            return
        except PeerProtocolError as error:
            self._scores.penalise(peer, error.reason)
            return
        self._learn(own[:1] + others)

    async def _answer_pex(self, peer: str, payload: Any) -> dict[str, list[str]]:
        self._learn(pex.parse_request(peer, payload, self._config.peer_exchange_addrs_max)[:1])
        others = [a for a in self.book.connected_addresses() if not a.endswith(f"/p2p/{peer}")]
        return {
            "addrs": self.own_addresses(),
            "peers": others[: self._config.peer_exchange_addrs_max],
        }

    def _learn(self, addresses: list[str]) -> None:
        now = _now_ms()
        for address in addresses:
            if self.book.learn(address, now):
                self._dirty = True
        self._wake.set()

    # -- persistence -------------------------------------------------------------------

    async def _persist_loop(self) -> None:
        try:
            while True:
                await trio.sleep(PERSIST_INTERVAL_S)
                if self._dirty:
                    self._dirty = False
                    await trio.to_thread.run_sync(self._write_peers_file, self.book.snapshot())
        finally:
            self._write_peers_file(self.book.snapshot())

    def _write_peers_file(self, snapshot: list[dict[str, object]]) -> None:
        temporary = self._peers_file.with_suffix(".json.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(snapshot, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._peers_file)

    # -- queries -----------------------------------------------------------------------

    def identified_addresses(self, peer: str) -> tuple[str, ...]:
        """Listen addresses the peer announced through libp2p identify, with /p2p/<id>."""
        suffix = f"/p2p/{peer}"
        try:
            known = self._host.get_peerstore().addrs(ID.from_base58(peer))
        except PeerStoreError:
            return ()
        addresses = [str(address) for address in known]
        return tuple(a if a.endswith(suffix) else a + suffix for a in addresses if "/tcp/" in a)

    def peers(self) -> list[PeerInfo]:
        infos = []
        for peer_id, connections in self._host.get_network().get_connections_map().items():
            peer = peer_id.to_base58()
            known = self.book.address_of(peer)
            addrs = [known] if known else list(self.identified_addresses(peer))
            addrs = addrs or _transport_addresses(connections)
            direction = self._directions.get(peer, "unknown")
            infos.append(PeerInfo(peer, addrs, direction, self.latency.latency_ms(peer)))
        return sorted(infos, key=lambda info: info.peer_id)

    def _nursery_or_fail(self) -> trio.Nursery:
        assert self._nursery is not None, "PeerManager.run() has not started"
        return self._nursery


def _transport_addresses(connections: list[Any]) -> list[str]:
    addresses: list[str] = []
    for connection in connections:
        addresses += [str(address) for address in connection.get_transport_addresses()]
    return addresses


def pacing_delays(count: int, interval_s: float) -> list[float]:
    """Pauses after each of `count` visits so that they fill `interval_s` evenly (none
    for no visits)."""
    return [interval_s / count] * count if count else []


def _now_ms() -> int:
    return int(trio.current_time() * 1000)
