"""The ledger service: drives the pure PBFT replica (`consensus.replica`) over
`/prsm/pbft/3.0.0` on the wire, with its SQLite store, and answers wallet/tx/ledger calls.

The shell's contract (consensus/replica_effects.py) and how it is kept:
- Effects are performed in list order, and every Persist* is durable before the next
  effect: consecutive Persist* effects are written in one `LedgerStore.write_batch`
  (COMMIT with synchronous=FULL) in a worker thread, awaited before anything after them.
- One effect list at a time: `handle()` and the performing of its effects run under one
  lock, so a later list can never overtake the persistence of an earlier one.
- Send/Broadcast only queue the message for its peer (`prsm_node/net/outbox.py`: one
  sender task per peer, messages queued meanwhile go out in one write of one-way wire
  notices); losing one is fine, the replica retransmits. Each peer's queue is capped.
  Until 3.0.0 every message was a request answered with an empty ack: measured on the
  ledger benchmark at 1,500 tx/s offered, the acks cost ~20% of the nodes' CPU per
  transaction (BENCHMARKS.md, session 5).
- Validators are addressed by public key: the node key is both the libp2p identity and
  the validator key, so replica i's peer id follows from the i-th validator key of the
  replica's current configuration (`ValidatorsChanged`, also emitted at start; the mapping
  changes in effect order, under the lock, so it always matches the replica's epoch).
- Every node runs a replica; outside the validator set it is passive (consensus/
  replica_epochs.py): it votes on nothing and asks for certified blocks (`NeedBlocks`),
  which this service fetches from the validators over `/prsm/ledger/1.0.0` and feeds back.
  So a follower whose ledger makes it a member starts voting at the boundary, and a
  validator that leaves the set keeps its ledger current, without a restart.
- PBFT frames from peers outside the current set are dropped and counted, not penalised:
  after a set change honest nodes of the other epoch still send them for a while. Their
  epoch is still read (a newer one means we are behind).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID

from consensus import replica_effects as rx
from consensus.codec import Ed25519Signer
from consensus.errors import PeerProtocolError as ConsensusPeerError
from consensus.genesis import Genesis
from consensus.job_tx import TxHeader
from consensus.ledger import LedgerState
from consensus.messages import decode_frame, encode_frame
from consensus.replica import Replica
from consensus.store import LedgerStore
from consensus.tx import TxBody, TxKind, sign_tx
from dht import node_effects as dht_effects
from dht.keys import key_from_bytes
from prsm_node.dht_service import DhtService, unix_ms
from prsm_node.errors import PeerProtocolError
from prsm_node.ledger_follow import (
    BLOCKS_PER_REQUEST_MAX,
    FOLLOW_INTERVAL_S,
    LEDGER_PROTOCOL,
    decode_blocks,
    serve_blocks,
)
from prsm_node.net.outbox import Outbox
from prsm_node.net.peers import PeerManager
from prsm_node.net.wire import RequestFailed, Wire

log = structlog.get_logger(__name__)

# 2: messages sign their epoch (consensus/messages.py); 3: one-way frames (Wire.notify)
PBFT_PROTOCOL = "/prsm/pbft/3.0.0"
LEDGER_TX_PROTOCOL = "/prsm/ledger-tx/1.0.0"
FORWARDED_WAIT_S_MAX = 8.0  # under network.request_timeout_ms (10 s), the wire's own limit
STORE_FILE_NAME = "ledger.sqlite"
SEND_QUEUE_MAX = 256
"""PBFT messages queued for one peer; more are dropped (and counted): the replica
retransmits."""
CLIENTS_WAITING_MAX = 4096
FETCH_ROUNDS_MAX = 16
"""Block requests per `NeedBlocks` (64 blocks each): the replica asks again on its next
retransmit tick if it is still behind."""
FETCH_IDLE_BACKOFF_S = (0.5, 1.0, 2.0)
"""After fetches that brought nothing (a follower at the head of an idle chain), the next
`NeedBlocks` waits this long (by streak; the last value repeats): 29 followers asking on
every 500 ms tick send the validators ~58 empty requests a second. Any block fetched
resets it; a follower of an idle chain sees a new block up to 2 s late."""
STREAM_OPEN_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Pauses between tries to open the PBFT stream to a fellow validator at start (~15 s)."""
PERSIST_EFFECTS = (rx.PersistView, rx.PersistSlot, rx.PersistCheckpoint, rx.PersistBlock)


class TxFailed(Exception):
    """A transaction was refused or not committed in time; `reason_code` says which."""

    def __init__(self, reason_code: str, message: str) -> None:
        self.reason_code = reason_code
        super().__init__(message)


@dataclass(slots=True)
class _Waiting:
    done: trio.Event = field(default_factory=trio.Event)
    outcome: rx.ClientCommitted | rx.ClientRejected | None = None


def peer_id_of_key(public_key: bytes) -> str:
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58()


class LedgerService:
    def __init__(
        self,
        *,
        genesis: Genesis,
        seed: bytes,
        data_dir: Path,
        config: rx.ReplicaConfig,
        wire: Wire,
        peers: PeerManager,
        dht: DhtService,
        host: Any,
    ) -> None:
        self.genesis = genesis
        self.signer = Ed25519Signer.from_seed(seed)
        self._wire, self._peers, self._dht, self._host = wire, peers, dht, host
        self.store = LedgerStore(data_dir / STORE_FILE_NAME, genesis)
        self.replica = Replica(
            signer=self.signer, genesis=genesis, config=config, recovered=self.store.recover()
        )
        self.epoch = -1
        self.validator_keys: tuple[bytes, ...] = ()
        self._peer_of_index: list[str] = []
        self._index_of_peer: dict[str, int] = {}
        self.index: int | None = None
        self._nursery: trio.Nursery | None = None  # set by run(); streams open from then on
        self._outbox = Outbox(wire, PBFT_PROTOCOL, connect=self._connect,
                              queue_max=SEND_QUEUE_MAX)
        self._configure(self.replica.epoch, self.replica.validators, self.replica.index)
        self._lock = trio.Lock()
        self._timers: list[tuple[int, int, rx.TimerId]] = []
        self._timer_order = itertools.count()
        self._timer_changed = trio.Event()
        self._waiting: dict[int, _Waiting] = {}
        self._request_ids = itertools.count(1)
        self._nonce_next = 0
        self._fetching = False
        self._fetch_turn = 0
        self._fetch_idle_streak = 0
        self._fetch_not_before = 0.0
        self.frames_received: Counter[str] = Counter()  # PBFT frames by message kind
        self._view_seen: tuple[int, str] | None = None
        self.counters = {"evidence": 0, "followed": 0,
                         "frames_from_non_members": 0, "validator_set_changes": 0}
        self._height_changed = trio.Event()

    # -- queries -----------------------------------------------------------------------

    @property
    def peer_ids(self) -> list[str]:
        return list(self._peer_of_index)

    def _configure(self, epoch: int, validators: tuple[bytes, ...], index: int | None) -> None:
        """Follow the replica's configuration (a `ValidatorsChanged`)."""
        if epoch != self.epoch and self.epoch >= 0:
            self.counters["validator_set_changes"] += 1
            log.info("ledger.validators_changed", epoch=epoch, validators=len(validators),
                     validator_index=index)
        self.epoch, self.validator_keys, self.index = epoch, validators, index
        self._peer_of_index = [peer_id_of_key(key) for key in validators]
        self._index_of_peer = {peer: i for i, peer in enumerate(self._peer_of_index)}
        self._outbox.retire(set(self._peer_of_index))
        if index is not None and self._nursery is not None:
            for other, peer in enumerate(self._peer_of_index):
                if other != index:
                    self._nursery.start_soon(self._open_streams, peer)

    async def _open_streams(self, peer: str) -> None:
        """Open the PBFT stream to a fellow validator ahead of the first vote (Wire.open);
        retried while the validator is unreachable, for a bounded time. The lazy open on
        the first send still covers whatever this misses."""
        for delay_s in STREAM_OPEN_RETRY_S:
            try:
                await self._connect(peer)
                await self._wire.open(peer, PBFT_PROTOCOL)
                return
            except RequestFailed as error:
                log.debug("ledger.stream_open_failed", peer=peer, reason=error.reason)
            await trio.sleep(delay_s)

    def statistics(self) -> dict[str, Any]:
        """Shell counters plus the replica's own snapshot (view, phase, heights, ...)."""
        return {"height": self.ledger().height, **self.counters, **self._outbox.counters,
                "frames_received": dict(self.frames_received),
                **asdict(self.replica.statistics())}

    def ledger(self) -> LedgerState:
        return self.replica.ledger

    async def wait_new_height(self, seen: int) -> int:
        """Wait until the ledger is past height `seen` and return the new height: how the
        other services (jobs) follow committed blocks without polling."""
        while self.ledger().height <= seen:
            await self._height_changed.wait()
        return self.ledger().height

    def _note_new_height(self) -> None:
        self._height_changed.set()
        self._height_changed = trio.Event()

    # -- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._wire.register(PBFT_PROTOCOL, self._serve)
        self._wire.register(LEDGER_PROTOCOL, self._serve_blocks)
        self._wire.register(LEDGER_TX_PROTOCOL, self._serve_tx)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._outbox.bind(nursery)
                nursery.start_soon(self._timer_loop)
                await self._feed(rx.Start())
                log.info("ledger.started", validator_index=self.index, height=self.ledger().height)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                async with self._lock:  # no write may be half-way when the store closes
                    self.store.close()

    async def _serve(self, peer: str, payload: Any) -> bytes:
        if not isinstance(payload, bytes):
            raise PeerProtocolError(peer, "pbft: message is not a frame")
        index = self._index_of_peer.get(peer)
        if index is None:  # not a member of our epoch: counted, never penalised
            self.counters["frames_from_non_members"] += 1
            try:
                message = decode_frame(peer, payload)
            except ConsensusPeerError:
                return b""
            await self._feed(rx.MessageReceived(peer=None, message=message))  # its epoch
            return b""
        try:
            message = decode_frame(index, payload)
        except ConsensusPeerError as error:
            raise PeerProtocolError(peer, f"pbft: {error}") from None
        self.frames_received[type(message.body).__name__] += 1
        async with self._lock:  # the mapping may have changed while we decoded
            if self._index_of_peer.get(peer) != index:
                index = None
            await self._perform(self.replica.handle(
                unix_ms(), rx.MessageReceived(peer=index, message=message)))
        return b""

    async def block(self, height: int) -> Any:
        """(block, certificate) at `height` from the store, or None."""
        async with self._lock:  # the store is one connection: one caller at a time
            return await trio.to_thread.run_sync(self.store.block, height)

    async def _serve_blocks(self, peer: str, payload: Any) -> dict[str, Any]:
        async with self._lock:  # never read the store half-way through a write
            return await serve_blocks(self.store, peer, payload)

    def _start_fetch(self) -> None:
        """A `NeedBlocks`: one fetch at a time (the replica asks again while behind)."""
        if (not self._fetching and self._nursery is not None and self._peer_of_index
                and trio.current_time() >= self._fetch_not_before):
            self._fetching = True
            self._nursery.start_soon(self._fetch_blocks)

    async def _fetch_blocks(self) -> None:
        """Pull certified blocks from the validators, round robin, and feed them to the
        replica, which checks each certificate against its height's configuration."""
        height = self.ledger().height
        try:
            for _ in range(FETCH_ROUNDS_MAX):
                peers = [p for i, p in enumerate(self._peer_of_index) if i != self.index]
                if not peers:
                    return
                self._fetch_turn += 1
                peer = peers[self._fetch_turn % len(peers)]
                try:
                    full = await self._fetch_from(peer)
                except RequestFailed as error:
                    log.debug("ledger.follow_failed", peer=peer, reason=error.reason)
                    continue
                except PeerProtocolError as error:
                    self._peers.penalise(peer, error.reason)
                    continue
                if not full:
                    return
        finally:
            self._fetching = False
            if self.ledger().height > height:
                self._fetch_idle_streak = 0
                self._fetch_not_before = 0.0
            else:
                wait_s = FETCH_IDLE_BACKOFF_S[min(self._fetch_idle_streak,
                                                  len(FETCH_IDLE_BACKOFF_S) - 1)]
                self._fetch_idle_streak += 1
                self._fetch_not_before = trio.current_time() + wait_s

    async def _fetch_from(self, peer: str) -> bool:
        """One request; True if the answer was full (more may follow)."""
        await self._connect(peer)
        request = {"from": self.ledger().height + 1, "count": BLOCKS_PER_REQUEST_MAX}
        answer = await self._wire.request(peer, LEDGER_PROTOCOL, request)
        blocks = await trio.to_thread.run_sync(decode_blocks, peer, answer)
        if not blocks:
            return False
        rejected = self.replica.counters["blocks_rejected"]
        async with self._lock:
            before = self.ledger().height
            effects = self.replica.handle(unix_ms(), rx.CertifiedBlocksReceived(blocks=blocks))
            # Counted in the same step as the replica applies them (blocks applied before
            # a rejected one too: they were good), not after the store writes: a query
            # answered while they are written sees the new height, and must see the
            # count that goes with it.
            self.counters["followed"] += self.ledger().height - before
            await self._perform(effects)
        if self.ledger().height > before:
            log.info("ledger.followed", peer=peer, height=self.ledger().height)
        if self.replica.counters["blocks_rejected"] > rejected:
            log.warning("ledger.certified_block_rejected", peer=peer,
                        height=self.ledger().height + 1, answered=len(blocks))
            raise PeerProtocolError(peer, "ledger: a certified block failed its checks")
        return len(blocks) == BLOCKS_PER_REQUEST_MAX

    async def _feed(self, event: Any) -> None:
        async with self._lock:
            await self._perform(self.replica.handle(unix_ms(), event))

    async def _perform(self, effects: list[Any]) -> None:
        self._note_view()
        batch: list[Any] = []
        for effect in effects:
            if isinstance(effect, PERSIST_EFFECTS):
                batch.append(effect)
                continue
            if batch:
                await trio.to_thread.run_sync(self.store.write_batch, batch)
                batch = []
            self._perform_one(effect)
        if batch:
            await trio.to_thread.run_sync(self.store.write_batch, batch)

    def _note_view(self) -> None:
        """Log view changes at info: in a healthy network they are rare, and each costs
        at least a timeout of no commits, so an operator wants to see them."""
        view, phase = self.replica.view, self.replica.phase.value
        if (view, phase) == self._view_seen:
            return
        self._view_seen = (view, phase)
        log.info("ledger.view", view=view, phase=phase, height=self.replica.executed,
                 mempool=len(self.replica.mempool), primary=self.replica.primary())

    def _perform_one(self, effect: Any) -> None:
        if isinstance(effect, rx.Send):
            self._send(effect.to, encode_frame(effect.message))
        elif isinstance(effect, rx.Broadcast):
            frame = encode_frame(effect.message)
            for index in range(len(self.validator_keys)):
                if index != self.index:
                    self._send(index, frame)
        elif isinstance(effect, rx.SetTimer):
            heapq.heappush(self._timers, (effect.at_ms, next(self._timer_order), effect.timer))
            self._timer_changed.set()
        elif isinstance(effect, rx.ClientCommitted | rx.ClientRejected):
            waiting = self._waiting.get(effect.request_id or 0)
            if waiting is not None:
                waiting.outcome = effect
                waiting.done.set()
        elif isinstance(effect, rx.BlockCommitted):
            log.debug("ledger.block_committed", height=effect.block.height)
            self._note_new_height()
        elif isinstance(effect, rx.EvidenceFound):
            self.counters["evidence"] += 1
            log.warning("ledger.equivocation", evidence=repr(effect.evidence)[:400])
        elif isinstance(effect, rx.PeerMisbehaved):
            self._peers.penalise(self._peer_of_index[effect.peer], f"pbft: {effect.reason}")
        elif isinstance(effect, rx.ValidatorsChanged):
            self._configure(effect.epoch, effect.validators, effect.index)
        elif isinstance(effect, rx.NeedBlocks):
            self._start_fetch()

    def _send(self, index: int, frame: bytes) -> None:
        self._outbox.send(self._peer_of_index[index], frame)

    async def _connect(self, peer: str) -> None:
        """Reach a validator: known or identified addresses first, then the DHT."""
        if self._host.get_network().get_connections(ID.from_base58(peer)):
            return
        known = self._peers.book.address_of(peer)
        addresses = [known] if known else list(self._peers.identified_addresses(peer))
        if not addresses:
            target = key_from_bytes(ID.from_base58(peer).to_bytes())
            result = await self._dht.command(
                lambda command_id: dht_effects.FindNode(command_id=command_id, target=target)
            )
            closest = getattr(result, "closest", ())
            addresses = [a for p in closest if ID(p.peer_id).to_base58() == peer for a in p.addrs]
        if not await self._peers.reach(peer, addresses, remember=False):
            raise RequestFailed(peer, PBFT_PROTOCOL, "validator unreachable")

    async def _timer_loop(self) -> None:
        while True:
            now = unix_ms()
            due = []
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
            for timer in due:
                await self._feed(rx.TimerFired(timer=timer))
            wait_s = (self._timers[0][0] - now) / 1000 if self._timers else 1.0
            with trio.move_on_after(max(0.0, wait_s)):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()

    # -- transactions ------------------------------------------------------------------

    async def submit_own(
        self, kind: TxKind, amount: int, to: bytes, timeout_s: float
    ) -> rx.ClientCommitted:
        """Sign a transaction with the node's key, submit it and wait for its commit."""

        def build(header: TxHeader) -> TxBody:
            return TxBody(chain_id=header.chain_id, kind=kind, sender=header.sender,
                          nonce=header.nonce, fee=header.fee, amount=amount, to=to)

        return await self.submit_built(build, timeout_s)

    async def submit_built(
        self, build: Callable[[TxHeader], TxBody], timeout_s: float
    ) -> rx.ClientCommitted:
        """Sign the body ``build`` makes (a ``consensus.job_tx`` constructor, say) with the
        node's key, the next nonce and the minimum fee; submit it and wait for its commit."""
        if len(self._waiting) >= CLIENTS_WAITING_MAX:
            raise TxFailed("busy", "too many transactions waiting; retry later")
        account = self.ledger().account(self.signer.public_key)
        nonce = self._nonce_next = max(self._nonce_next, account.nonce)
        body = build(TxHeader(chain_id=self.genesis.chain_id, sender=self.signer.public_key,
                              nonce=nonce, fee=self.genesis.params.fee_min))
        self._nonce_next += 1
        return await self.submit(sign_tx(body, self.signer).encoded, timeout_s)

    async def submit(self, tx: bytes, timeout_s: float) -> rx.ClientCommitted:
        if self.index is None:
            return await self._submit_through_validator(tx, timeout_s)
        request_id = next(self._request_ids)
        waiting = self._waiting[request_id] = _Waiting()
        try:
            await self._feed(rx.ClientRequest(tx=tx, request_id=request_id))
            with trio.move_on_after(timeout_s):
                await waiting.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        return self._outcome(waiting, timeout_s)

    async def admit(self, tx: bytes) -> None:
        """Put a transaction in the mempool and return at once (like eth_sendRawTransaction);
        raises TxFailed if the checks refuse it. Validators only."""
        if self.index is None:
            raise TxFailed("not_validator", "only a validator admits without waiting")
        waiting = _Waiting()
        request_id = next(self._request_ids)
        self._waiting[request_id] = waiting
        try:
            await self._feed(rx.ClientRequest(tx=tx, request_id=request_id))
        finally:
            self._waiting.pop(request_id, None)
        if isinstance(waiting.outcome, rx.ClientRejected):
            raise TxFailed(waiting.outcome.reason_code, waiting.outcome.message)

    def _outcome(self, waiting: _Waiting, timeout_s: float) -> rx.ClientCommitted:
        outcome = waiting.outcome
        if outcome is None:
            self._nonce_next = 0  # resynchronise with the ledger on the next submission
            raise TxFailed("timeout", f"not committed within {timeout_s:g} s (it may still be)")
        if isinstance(outcome, rx.ClientRejected):
            self._nonce_next = 0
            raise TxFailed(outcome.reason_code, outcome.message)
        return outcome

    # -- transactions from followers ---------------------------------------------------

    async def _submit_through_validator(self, tx: bytes, timeout_s: float) -> rx.ClientCommitted:
        """A follower has no mempool: it hands the transaction to a validator, trying the
        next one when a validator cannot be reached, until `timeout_s` runs out."""
        wait_ms = int(min(timeout_s, FORWARDED_WAIT_S_MAX) * 1000)
        with trio.move_on_after(timeout_s):
            for turn in itertools.count():
                peer = self._peer_of_index[turn % len(self._peer_of_index)]
                try:
                    await self._connect(peer)
                    answer = await self._wire.request(
                        peer, LEDGER_TX_PROTOCOL, {"tx": tx, "wait_ms": wait_ms}
                    )
                except RequestFailed as error:
                    log.debug("ledger.forward_failed", peer=peer, reason=error.reason)
                    await trio.sleep(FOLLOW_INTERVAL_S)
                    continue
                if isinstance(answer, dict) and answer.get("reason") == "not_validator":
                    await trio.sleep(FOLLOW_INTERVAL_S)  # it left the set: try the next one
                    continue
                return _forwarded_outcome(peer, answer)
        raise TxFailed("timeout", f"no validator committed it within {timeout_s:g} s")

    async def _serve_tx(self, peer: str, payload: Any) -> dict[str, Any]:
        """A follower's transaction: every check of a local submission runs."""
        if self.index is None:  # maybe it just left the set: the follower tries another
            return {"ok": False, "reason": "not_validator", "message": "not a validator"}
        if not isinstance(payload, dict) or set(payload) != {"tx", "wait_ms"}:
            raise PeerProtocolError(peer, "ledger-tx: request must be {'tx', 'wait_ms'}")
        tx, wait_ms = payload["tx"], payload["wait_ms"]
        if not isinstance(tx, bytes) or len(tx) > self.genesis.params.tx_size_max:
            raise PeerProtocolError(peer, "ledger-tx: tx must be bytes within tx_size_max")
        if not isinstance(wait_ms, int) or isinstance(wait_ms, bool) or wait_ms < 1:
            raise PeerProtocolError(peer, "ledger-tx: wait_ms must be a positive integer")
        wait_s = min(wait_ms / 1000, FORWARDED_WAIT_S_MAX)
        try:
            committed = await self.submit(tx, wait_s)
        except TxFailed as error:
            return {"ok": False, "reason": error.reason_code, "message": str(error)[:200]}
        return {"ok": True, "tx_hash": committed.tx_hash, "height": committed.height}


def _forwarded_outcome(peer: str, answer: Any) -> rx.ClientCommitted:
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise TxFailed("bad_answer", f"validator {peer} answered malformed data")
    if not answer["ok"]:
        raise TxFailed(str(answer.get("reason"))[:40], str(answer.get("message"))[:200])
    tx_hash, height = answer.get("tx_hash"), answer.get("height")
    if not isinstance(tx_hash, bytes) or not isinstance(height, int):
        raise TxFailed("bad_answer", f"validator {peer} answered malformed data")
    return rx.ClientCommitted(request_id=0, tx_hash=tx_hash, height=height)
