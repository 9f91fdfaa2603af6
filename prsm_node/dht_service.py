"""The DHT service: drives the pure `dht.node.DhtNode` over `/prsm/kad/1.0.0` on the wire.

The core decides everything (routing, lookups, records, timeouts); this shell only
performs its effects (dht/node_effects.py states the contract) and feeds back what
happened:
- SendRequest: dial the peer if needed, send the encoded message as one wire request; the
  answer goes back as FrameReceived, a failure as RequestFailed.
- SendResponse: only ever produced while serving a request; it becomes the wire answer.
- SetTimer: a heap of deadlines served by one task (the core never cancels timers).
- CommandFinished: wakes the control-API call waiting on that command id.
- PersistTable: written atomically to `<data_dir>/dht_table.msgpack` (and once more at
  shutdown), reloaded at start.
- DropPeer: disconnect (the core scored the peer down for hostile input).

Time: the core is given Unix time in ms, because records carry absolute expiry times
that other nodes compare against their own clocks.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import structlog
import trio
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from dht import node_effects as fx
from dht.errors import SnapshotError
from dht.messages import Request, encode_message
from dht.node import DhtNode
from dht.peer import ADDRS_MAX, PeerInfo
from dht.records import Ed25519Signer
from dht.routing import RoutingTable
from prsm_node.errors import PeerProtocolError
from prsm_node.net.peers import PeerManager
from prsm_node.net.wire import RequestFailed, Wire

log = structlog.get_logger(__name__)

DHT_PROTOCOL = "/prsm/kad/1.0.0"
TABLE_FILE_NAME = "dht_table.msgpack"
TABLE_FILE_BYTES_MAX = 16 * 1024 * 1024
COMMANDS_PENDING_MAX = 256


def unix_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _PendingCommand:
    done: trio.Event = field(default_factory=trio.Event)
    result: fx.CommandResult | None = None


class DhtService:
    def __init__(
        self,
        *,
        core_config: fx.DhtConfig,
        seed: bytes,
        own_peer_id: str,
        wire: Wire,
        peers: PeerManager,
        host: Any,
        data_dir: Path,
        rng: Any,
    ) -> None:
        self._wire = wire
        self._peers = peers
        self._host = host
        self._table_file = data_dir / TABLE_FILE_NAME
        self._own_id = ID.from_base58(own_peer_id).to_bytes()
        own = PeerInfo(peer_id=self._own_id, addrs=self._own_addresses())
        self.signer = Ed25519Signer(SigningKey(seed))
        self.core = DhtNode(
            own=own,
            rng=rng,
            config=core_config,
            table=self._load_table(core_config),
            signer=self.signer,
            now_ms=unix_ms(),
        )
        self._timers: list[tuple[int, int, fx.TimerId]] = []
        self._timer_order = itertools.count()
        self._timer_changed = trio.Event()
        self._commands: dict[int, _PendingCommand] = {}
        self._command_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    # -- start-up ----------------------------------------------------------------------

    def _own_addresses(self) -> tuple[str, ...]:
        return tuple(str(address) for address in self._host.get_addrs())[:ADDRS_MAX]

    def listening(self) -> None:
        """The host listens now: our provider records carry its addresses."""
        self.core.set_own_addresses(self._own_addresses())

    def _load_table(self, config: fx.DhtConfig) -> RoutingTable | None:
        try:
            with open(self._table_file, "rb") as handle:
                raw = handle.read(TABLE_FILE_BYTES_MAX + 1)
            if len(raw) > TABLE_FILE_BYTES_MAX:
                raise SnapshotError("file larger than its cap")
            snapshot = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            return RoutingTable.from_snapshot(
                snapshot,
                self._own_id,
                bucket_size=config.k,
                replacements_max=config.replacements_max,
                failures_max=config.failures_max,
            )
        except FileNotFoundError:
            return None
        except (SnapshotError, ValueError, msgpack.UnpackException) as error:
            log.warning("dht.table_unreadable", file=str(self._table_file), error=str(error))
            return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._wire.register(DHT_PROTOCOL, self._serve)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._timer_loop)
                task_status.started()
        finally:  # the core persists on its maintenance tick; save the latest table too
            self._write_table(msgpack.packb(self.core.table.snapshot(), use_bin_type=True))

    def peer_connected(self, peer_id: str, direction: str) -> None:
        """A connection we dialled (a bootstrap or known peer): join the DHT through it.

        Bootstrap adds the peer and looks up our own id, which fills our neighbourhood;
        inbound peers enter the table when they send us requests."""
        address = self._peers.book.address_of(peer_id)
        if direction != "outbound" or address is None or self._nursery is None:
            return
        peer = PeerInfo(peer_id=ID.from_base58(peer_id).to_bytes(), addrs=(address,))
        self._apply(self.core.handle(unix_ms(), fx.Bootstrap(command_id=None, peers=(peer,))))

    # -- commands (control API) --------------------------------------------------------

    async def command(self, build: Any) -> fx.CommandResult:
        """Run one core command to completion; `build(command_id)` makes the input."""
        if len(self._commands) >= COMMANDS_PENDING_MAX:
            return fx.CommandFailed(reason="too many DHT commands in flight; retry later")
        command_id = next(self._command_ids)
        pending = self._commands[command_id] = _PendingCommand()
        try:
            self._apply(self.core.handle(unix_ms(), build(command_id)))
            await pending.done.wait()
        finally:
            self._commands.pop(command_id, None)
        assert pending.result is not None
        return pending.result

    # -- effects -----------------------------------------------------------------------

    def _apply(self, effects: list[fx.Effect]) -> fx.SendResponse | None:
        """Perform effects; returns the response to a request being served, if any."""
        response = None
        for effect in effects:
            if isinstance(effect, fx.SendRequest):
                self._nursery_or_fail().start_soon(self._send, effect.peer, effect.message)
            elif isinstance(effect, fx.SendResponse):
                response = effect
            elif isinstance(effect, fx.SetTimer):
                heapq.heappush(self._timers, (effect.at_ms, next(self._timer_order), effect.timer))
                self._timer_changed.set()
            elif isinstance(effect, fx.CommandFinished):
                pending = self._commands.get(effect.command_id)
                if pending is not None:
                    pending.result = effect.result
                    pending.done.set()
            elif isinstance(effect, fx.PersistTable):
                self._nursery_or_fail().start_soon(self._persist, effect.snapshot)
            elif isinstance(effect, fx.DropPeer):
                peer = ID(effect.peer_id).to_base58()
                self._peers.drop_peer(peer, f"dht: {effect.reason}")
        return response

    async def _send(self, peer: PeerInfo, message: Request) -> None:
        peer_id = ID(peer.peer_id).to_base58()
        try:
            if not await self._peers.reach(peer_id, peer.addrs, remember=True):
                raise RequestFailed(peer_id, DHT_PROTOCOL, "cannot connect to the peer")
            answer = await self._wire.request(peer_id, DHT_PROTOCOL, encode_message(message))
        except RequestFailed as error:
            self._feed(fx.RequestFailed(request_id=message.request_id, reason=error.reason))
            return
        if not isinstance(answer, bytes):
            self._peers.penalise(peer_id, "dht: answer is not a frame")
            self._feed(fx.RequestFailed(request_id=message.request_id, reason="bad answer"))
            return
        self._feed(fx.FrameReceived(peer=self._peer_info(peer_id), frame=answer))

    async def _serve(self, peer_id: str, payload: Any) -> bytes:
        if not isinstance(payload, bytes):
            raise PeerProtocolError(peer_id, "dht: request is not a frame")
        frame = fx.FrameReceived(peer=self._peer_info(peer_id), frame=payload)
        response = self._apply(self.core.handle(unix_ms(), frame))
        if response is None:
            raise PeerProtocolError(peer_id, "dht: request rejected")
        return encode_message(response.message)

    def _feed(self, event: fx.Input) -> None:
        self._apply(self.core.handle(unix_ms(), event))

    def _peer_info(self, peer_id: str) -> PeerInfo:
        """The peer with its listen addresses: from the peer book, else from what libp2p's
        identify exchange put in the peerstore (an inbound peer's connection shows only an
        ephemeral port, which nobody can dial)."""
        address = self._peers.book.address_of(peer_id)
        addrs = (address,) if address else self._peers.identified_addresses(peer_id)
        return PeerInfo(peer_id=ID.from_base58(peer_id).to_bytes(), addrs=addrs[:ADDRS_MAX])

    async def _timer_loop(self) -> None:
        while True:
            now = unix_ms()
            while self._timers and self._timers[0][0] <= now:
                _, _, timer = heapq.heappop(self._timers)
                self._feed(fx.TimerFired(timer=timer))
            wait_s = (self._timers[0][0] - now) / 1000 if self._timers else 60.0
            with trio.move_on_after(max(0.0, wait_s)):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()

    async def _persist(self, snapshot: dict[str, object]) -> None:
        await trio.to_thread.run_sync(self._write_table, msgpack.packb(snapshot, use_bin_type=True))

    def _write_table(self, data: bytes) -> None:
        temporary = self._table_file.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._table_file)

    def _nursery_or_fail(self) -> trio.Nursery:
        assert self._nursery is not None, "DhtService.run() has not started"
        return self._nursery
