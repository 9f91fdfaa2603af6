"""The PBFT replica (Castro & Liskov, OSDI '99) as a sans-IO state machine.

Rules:
1. Sans-IO: ``handle(now_ms, input) -> list[Effect]``. No clock, randomness, socket or
   disk; ``replica_effects.py`` states the shell's contract, in particular: effects are
   performed in order and every ``Persist*`` is durable before the next effect.
2. Persist before you speak: a slot's pre-prepare is persisted before we send its
   PRE-PREPARE or PREPARE, its prepared certificate before our COMMIT, the view before our
   VIEW-CHANGE, and a block (with the state after it) before its CHECKPOINT or a client
   answer. A restarted replica therefore never contradicts what it said.
3. One phase ``Enum`` and one transition table (``TRANSITIONS``); an illegal (phase,
   trigger) pair raises ``ReplicaStateError`` naming both.
4. Everything is bounded: slots live in the window (stable checkpoint, stable + window_max];
   votes only for the current view and the window; view changes for at most
   ``VIEW_CHANGE_VIEWS_MAX`` views ahead; caches are LRU; see ``ReplicaConfig``.
5. Peer input is checked, never asserted: a bad message raises ``PeerProtocolError``,
   caught in ``handle`` and returned as ``PeerMisbehaved``.

Theory of operation. Blocks carry the state root after their execution, so the primary
proposes ``seq`` only once it executed ``seq - 1`` (one block in flight), and a backup
prepares a block only after executing its predecessor and re-executing the block to check
the root (the tentative state is kept and installed at commit). Throughput comes from
batching (``Params.batch_size_max``), not from pipelining; the window still bounds what a
replica accepts and buffers. A block commits when 2f+1 COMMITs for (view, seq, digest)
arrive; those COMMITs are its certificate, which followers check with
``certificates.verify_commit_certificate``. Every K blocks a CHECKPOINT (block hash) is
broadcast; 2f+1 matching make it stable: the low watermark moves and older slots go.
Liveness: a progress timer (work pending, no block executed) starts a view change; a
view change that does not complete doubles its timeout and moves to the next view; f+1
view changes for higher views make a replica join (section 4.5.2). Lost messages are
resent on a retransmit timer; a replica that sees sequence numbers beyond its next asks
the sender for blocks (STATE-REQUEST), or for the stable checkpoint's snapshot. The
validator set changes at epoch boundaries: ``replica_epochs.py`` (a mixin) has the rules.
"""

from __future__ import annotations

from collections import OrderedDict

from consensus.certificates import SignatureCache, primary_of
from consensus.codec import Signer
from consensus.errors import PeerProtocolError, ReplicaStateError
from consensus.genesis import Genesis
from consensus.ledger import Block, BlockInvalid, LedgerState
from consensus.mempool import Mempool
from consensus.messages import (
    CertifiedBlock,
    Checkpoint,
    Commit,
    Forward,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    Signed,
    StateReply,
    StateRequest,
    ViewChange,
    sign_message,
)
from consensus.replica_clients import ClientTransactions
from consensus.replica_effects import (
    BlockCommitted,
    Broadcast,
    CertifiedBlocksReceived,
    ClientRequest,
    Effect,
    Equivocation,
    EvidenceFound,
    MessageReceived,
    PeerMisbehaved,
    PersistBlock,
    PersistCheckpoint,
    PersistSlot,
    Recovered,
    ReplicaConfig,
    ReplicaStatistics,
    SetTimer,
    SlotRecord,
    Start,
    TimerFired,
    TimerId,
    TimerKind,
    ValidatorsChanged,
)
from consensus.replica_epochs import Epochs
from consensus.replica_view import TRANSITIONS, Phase, Trigger, ViewChangeAndTransfer

CHECKPOINT_STATES_MAX = 8
"""States kept for checkpoints not yet stable; a replica executing far ahead by state
transfer must not keep one per checkpoint forever (the newest are the useful ones)."""


class Slot:
    """Our knowledge of one sequence number in the current view (plus an older proof)."""

    __slots__ = ("block", "certificate", "commit_sent", "pre_prepare", "prepare_sent",
                 "prepared", "seq", "state", "view")

    def __init__(self, pre_prepare: Signed, prepared: PreparedProof | None) -> None:
        body: PrePrepare = pre_prepare.body
        self.seq = body.seq
        self.view = body.view
        self.pre_prepare = pre_prepare
        self.block: Block = body.block
        self.prepared = prepared
        """Prepared certificate of the highest view we prepared this seq in (may be older)."""
        self.state: LedgerState | None = None  # tentative state after the block, once valid
        self.prepare_sent = False
        self.commit_sent = False
        self.certificate: tuple[Signed, ...] = ()

    def record(self) -> SlotRecord:
        return SlotRecord(seq=self.seq, view=self.view, pre_prepare=self.pre_prepare,
                          prepared=self.prepared)


class Replica(ClientTransactions, ViewChangeAndTransfer, Epochs):
    """One PBFT validator (or a passive non-member); see the module rules (view change and
    state transfer live in ``replica_view.py``, epochs in ``replica_epochs.py``: mixins,
    to keep each module under the size rule)."""

    validators: tuple[bytes, ...]
    epoch: int
    n: int
    f: int
    quorum: int
    cache: SignatureCache
    index: int | None
    """Our position in ``validators``; None: not a member of this epoch's set (passive)."""

    def __init__(self, *, signer: Signer, genesis: Genesis, config: ReplicaConfig | None = None,
                 recovered: Recovered | None = None, index: int | None = None) -> None:
        self.config = config or ReplicaConfig()
        self.genesis = genesis
        self.signer = signer
        self.mempool = Mempool(self.config.mempool_max, self.config.mempool_per_sender_max)
        self.now_ms = 0
        self.phase = Phase.NORMAL
        self.view = 0
        self.ledger = LedgerState(genesis)
        self.last_certificate: tuple[Signed, ...] = ()
        self.slots: dict[int, Slot] = {}
        self.prepares: dict[tuple[int, int], dict[int, Signed]] = {}
        self.commits: dict[tuple[int, int], dict[int, Signed]] = {}
        self.checkpoint_votes: dict[int, dict[int, Signed]] = {}
        self.checkpoint_states: dict[int, tuple[Block, LedgerState]] = {}
        self.own_checkpoint: Signed | None = None
        self.stable_seq = 0
        self.stable_block: Block | None = None
        self.stable_proof: tuple[Signed, ...] = ()
        self.stable_state: LedgerState | None = None
        self.view_changes: dict[int, dict[int, Signed]] = {}
        self.view_change_attempts = 0
        self.own_view_changes: OrderedDict[int, Signed] = OrderedDict()
        self.last_new_view: Signed | None = None
        self.new_view_sent_ms: dict[int, int] = {}
        self.recent: OrderedDict[int, CertifiedBlock] = OrderedDict()
        self.requests: OrderedDict[bytes, int] = OrderedDict()
        self.evidence: list[Equivocation] = []
        self.timer_generation = dict.fromkeys(TimerKind, 0)
        self.timer_armed = dict.fromkeys(TimerKind, False)
        self.progress_mark = -1
        self.batch_due = False
        self.retransmit_mark = -1  # executed height at the last retransmit tick
        self.forward_pending: list[bytes] = []
        self.ledger_timer_at: int | None = None  # the job timer the LEDGER timer is set for
        self._view_change_cache: tuple[tuple[int, int, int], Signed] | None = None
        self.state_transfer_peer = 0
        self.need_blocks_ms: int | None = None
        self.counters = dict.fromkeys((
            "view_changes_started", "peer_errors", "state_transfers", "reconfigurations",
            "messages_other_epoch", "messages_from_non_members", "blocks_fetched",
            "blocks_rejected"), 0)
        if recovered is not None and recovered.ledger is not None:  # None: no block yet
            self.ledger = recovered.ledger
        self._configure(self.ledger)
        assert index is None or index == self.index, "signer is not validator[index]"
        if recovered is not None:
            self._recover(recovered)

    def _recover(self, recovered: Recovered) -> None:
        self.last_certificate = recovered.last_certificate
        self._recover_epoch(recovered)
        for block, certificate in recovered.recent_blocks:
            self.recent[block.height] = CertifiedBlock(block=block, certificate=certificate)

    # -- the one entry point ---------------------------------------------------------------

    def handle(self, now_ms: int, event: object) -> list[Effect]:
        self.now_ms = max(self.now_ms, now_ms)
        out: list[Effect] = []
        kind = type(event)
        if self.index is None and kind is ClientRequest:
            self._on_passive_input(event, out)
        elif kind is MessageReceived:
            try:
                self._on_message(event, out)  # type: ignore[arg-type]
            except PeerProtocolError as error:
                self.counters["peer_errors"] += 1
                out.append(PeerMisbehaved(peer=event.peer, reason=error.reason))  # type: ignore[attr-defined]
        elif kind is ClientRequest:
            self._on_client_request(event, out)  # type: ignore[arg-type]
        elif kind is TimerFired:
            self._on_timer(event.timer, out)  # type: ignore[attr-defined]
        elif kind is Start:
            self._on_start(out)
        elif kind is CertifiedBlocksReceived:
            self._on_certified_blocks(event, out)  # type: ignore[arg-type]
        else:
            raise TypeError(f"unknown replica input {kind.__name__}")
        self._progress(out)
        return out

    def _transition(self, trigger: Trigger) -> None:
        target = TRANSITIONS[self.phase].get(trigger)
        if target is None:
            raise ReplicaStateError(f"no transition from {self.phase.value} on {trigger.value}")
        self.phase = target

    # -- helpers ---------------------------------------------------------------------------

    @property
    def executed(self) -> int:
        return self.ledger.height

    def primary(self, view: int | None = None) -> int:
        return primary_of(self.view if view is None else view, self.n)

    def _sign(self, body: object) -> Signed:
        assert self.index is not None, "a passive replica signs nothing"
        message = sign_message(body, self.index, self.signer, self.epoch)
        self.cache._verified[message.digest()] = None  # our own signature needs no check
        return message

    def _timer(self, kind: TimerKind, delay_ms: int, out: list[Effect]) -> None:
        self.timer_generation[kind] += 1
        self.timer_armed[kind] = True
        out.append(SetTimer(timer=TimerId(kind=kind, generation=self.timer_generation[kind]),
                            at_ms=self.now_ms + delay_ms))

    def _in_window(self, seq: int) -> bool:
        return self.stable_seq < seq <= self.stable_seq + self.config.window_max

    def _verify(self, message: Signed, peer: int) -> None:
        if not self.cache.check(message):
            raise PeerProtocolError(peer, f"bad signature on {type(message.body).__name__}")

    # -- inputs ----------------------------------------------------------------------------

    def _on_start(self, out: list[Effect]) -> None:
        self._timer(TimerKind.RETRANSMIT, self.config.retransmit_interval_ms, out)
        out.append(ValidatorsChanged(epoch=self.epoch, validators=self.validators,
                                     index=self.index))
        if self.index is None:
            self._need_blocks(out)
            return
        if self.phase is Phase.VIEW_CHANGE:
            message = self._view_change_message()
            self.view_changes.setdefault(self.view, {})[self.index] = message
            out.append(Broadcast(message=message))
        if self.n > 1:
            self._request_state((self.index + 1) % self.n, out)

    def _on_message(self, event: MessageReceived, out: list[Effect]) -> None:
        message, peer = event.message, event.peer
        if self._other_epoch(message, out):
            return
        if peer is None or self.index is None:
            self.counters["messages_from_non_members"] += 1
            return
        if message.signer != peer:
            raise PeerProtocolError(peer, "message signed by another replica")
        self._verify(message, peer)
        body = message.body
        kind = type(body)
        if kind is PrePrepare:
            self._on_pre_prepare(message, out)
        elif kind is Prepare or kind is Commit:
            self._on_vote(message, out)
        elif kind is Checkpoint:
            self._on_checkpoint(message, out)
        elif kind is Forward:
            self._on_forward(message)
        elif kind is ViewChange:
            self._on_view_change(message, out)
        elif kind is NewView:
            self._on_new_view(message, out)
        elif kind is StateRequest:
            self._on_state_request(message, out)
        elif kind is StateReply:
            self._on_state_reply(message, out)
        else:
            raise PeerProtocolError(peer, f"unexpected message {kind.__name__}")

    # -- normal case -----------------------------------------------------------------------

    def _on_pre_prepare(self, message: Signed, out: list[Effect]) -> None:
        body: PrePrepare = message.body
        if message.signer != self.primary(body.view):
            raise PeerProtocolError(message.signer, "pre-prepare from a non-primary")
        if body.block.height != body.seq:
            raise PeerProtocolError(message.signer, "block height differs from seq")
        self._note_behind(body.seq, body.view, message.signer, out)
        if body.view != self.view or self.phase is not Phase.NORMAL:
            return
        if not self._in_window(body.seq):
            return
        self._accept_pre_prepare(message, out)

    def _accept_pre_prepare(self, message: Signed, out: list[Effect]) -> None:
        body: PrePrepare = message.body
        slot = self.slots.get(body.seq)
        if slot is not None and slot.view == body.view:
            if slot.block.block_hash != body.block.block_hash:
                self._record_equivocation(slot.pre_prepare, message, out)
            return
        if body.seq <= self.executed and body.block.block_hash != self._hash_at(body.seq):
            raise PeerProtocolError(message.signer, "pre-prepare contradicts a committed block")
        if body.block.timestamp_ms > self.now_ms + self.config.clock_skew_max_ms:
            raise PeerProtocolError(message.signer, "block timestamp too far in the future")
        prepared = slot.prepared if slot is not None else None
        self.slots[body.seq] = Slot(message, prepared)
        self._validate(out)

    def _hash_at(self, seq: int) -> bytes | None:
        if seq == self.executed:
            return self.ledger.last_block_hash
        held = self.recent.get(seq)
        return held.block.block_hash if held is not None else None

    def _validate(self, out: list[Effect]) -> None:
        """Re-execute the next block (and mark older, already executed ones valid)."""
        for seq in sorted(self.slots):
            slot = self.slots[seq]
            if slot.view != self.view or slot.prepare_sent or seq > self.executed + 1:
                continue
            if seq <= self.executed:
                done = self.recent.get(seq)  # executed meanwhile: vote only for that block
                if done is None or done.block.block_hash != slot.block.block_hash:
                    del self.slots[seq]
                    if done is not None:
                        out.append(PeerMisbehaved(peer=slot.pre_prepare.signer,
                                                  reason="pre-prepare contradicts a block"))
                    continue
                slot.state = self.ledger
            elif slot.state is None:
                try:
                    slot.state = self.ledger.apply_block(slot.block, self.mempool.known)
                except BlockInvalid as error:
                    del self.slots[seq]
                    out.append(PeerMisbehaved(peer=slot.pre_prepare.signer,
                                              reason=f"invalid block: {error}"))
                    self._suspect(out)
                    return
            out.append(PersistSlot(record=slot.record()))
            slot.prepare_sent = True
            if self.index != self.primary():
                prepare = self._sign(Prepare(view=self.view, seq=seq,
                                             digest=slot.block.block_hash))
                self.prepares.setdefault((self.view, seq), {})[self.index] = prepare
                out.append(Broadcast(message=prepare))
            self._check_prepared(slot, out)

    def _on_vote(self, message: Signed, out: list[Effect]) -> None:
        body = message.body
        if type(body) is Prepare and message.signer == self.primary(body.view):
            raise PeerProtocolError(message.signer, "the primary does not send prepares")
        self._note_behind(body.seq, body.view, message.signer, out)
        if body.view != self.view or not self._in_window(body.seq):
            return
        table = self.prepares if type(body) is Prepare else self.commits
        votes = table.setdefault((body.view, body.seq), {})
        if message.signer in votes:
            return
        votes[message.signer] = message
        slot = self.slots.get(body.seq)
        if slot is not None and slot.view == self.view:
            if type(body) is Prepare:
                self._check_prepared(slot, out)
            else:
                self._check_committed(slot)

    def _matching(self, table: dict[tuple[int, int], dict[int, Signed]], slot: Slot
                  ) -> list[Signed]:
        votes = table.get((slot.view, slot.seq), {})
        digest = slot.block.block_hash
        return [votes[i] for i in sorted(votes) if votes[i].body.digest == digest]

    def _check_prepared(self, slot: Slot, out: list[Effect]) -> None:
        if slot.commit_sent or slot.state is None or not slot.prepare_sent:
            return
        prepares = [p for p in self._matching(self.prepares, slot)
                    if p.signer != self.primary(slot.view)]
        if len(prepares) + 1 < self.quorum:
            return
        slot.prepared = PreparedProof(pre_prepare=slot.pre_prepare,
                                      prepares=tuple(prepares[:self.quorum - 1]))
        out.append(PersistSlot(record=slot.record()))
        slot.commit_sent = True
        commit = self._sign(Commit(view=slot.view, seq=slot.seq, digest=slot.block.block_hash))
        self.commits.setdefault((slot.view, slot.seq), {})[self.index] = commit
        out.append(Broadcast(message=commit))
        self._check_committed(slot)

    def _check_committed(self, slot: Slot) -> None:
        if slot.certificate or slot.state is None:
            return
        commits = self._matching(self.commits, slot)
        if len(commits) >= self.quorum:
            slot.certificate = tuple(commits[:self.quorum])

    # -- execution -------------------------------------------------------------------------

    def _progress(self, out: list[Effect]) -> None:
        """After every input: execute committed blocks, propose, arm timers."""
        while True:
            slot = self.slots.get(self.executed + 1)
            if slot is None or not slot.certificate or slot.state is None:
                break
            self._execute(slot.block, slot.certificate, slot.state, out)
            self._validate(out)
        self._maybe_propose(out)
        if (not self.timer_armed[TimerKind.PROGRESS] and self.phase is Phase.NORMAL
                and self.index is not None and self._work_pending()):
            self.progress_mark = self.executed
            self._timer(TimerKind.PROGRESS, self._view_change_timeout(), out)

    def _execute(self, block: Block, certificate: tuple[Signed, ...], state: LedgerState,
                 out: list[Effect], snapshot_installed: bool = False) -> None:
        assert state.height == block.height and state.state_root == block.state_root
        self.ledger = state
        self.last_certificate = certificate
        self.view_change_attempts = 0
        out.append(PersistBlock(block=block, certificate=certificate, state=state,
                                snapshot_installed=snapshot_installed))
        out.append(BlockCommitted(block=block, certificate=certificate))
        self.recent[block.height] = CertifiedBlock(block=block, certificate=certificate)
        while len(self.recent) > self.config.blocks_retained_max:
            self.recent.popitem(last=False)
        self._answer_clients(block, out)
        at_checkpoint = block.height % self.config.checkpoint_interval == 0
        full_prune = snapshot_installed or at_checkpoint
        self.mempool.prune(state, None if full_prune else state.changed_keys)
        if at_checkpoint and self.index is not None:
            self.checkpoint_states[block.height] = (block, state)
            while len(self.checkpoint_states) > CHECKPOINT_STATES_MAX:  # never stable: drop
                del self.checkpoint_states[min(self.checkpoint_states)]
            self.own_checkpoint = self._sign(Checkpoint(seq=block.height,
                                                        digest=block.block_hash))
            out.append(Broadcast(message=self.own_checkpoint))
            self._record_checkpoint_vote(self.own_checkpoint, out)
        if state.epoch != self.epoch:
            self._reconfigure(block, state, out)

    def _maybe_propose(self, out: list[Effect]) -> None:
        seq = self.executed + 1
        held = self.slots.get(seq)
        if (self.phase is not Phase.NORMAL or self.primary() != self.index
                or not self._in_window(seq) or (held is not None and held.view == self.view)):
            return
        timers_due = self._ledger_timers_due()
        if not self.mempool.has_executable(self.ledger) and not timers_due:
            self._arm_ledger_timer(out)
            return
        batch_max = self.ledger.params.batch_size_max
        candidates = self.mempool.candidates(batch_max)
        if len(candidates) < batch_max and not self.batch_due and not timers_due:
            self._arm_batch(out)
            return
        self.timer_armed[TimerKind.BATCH] = False
        timestamp = max(self.now_ms, self.ledger.last_timestamp_ms + 1)
        block, state = self.ledger.build_block(timestamp, candidates)
        if not block.txs and not timers_due:
            return
        pre_prepare = self._sign(PrePrepare(view=self.view, seq=seq, block=block))
        slot = Slot(pre_prepare, None)
        slot.state = state
        self.slots[seq] = slot
        out.append(PersistSlot(record=slot.record()))
        out.append(Broadcast(message=pre_prepare))
        slot.prepare_sent = True
        self._check_prepared(slot, out)

    def _work_pending(self) -> bool:
        return (any(seq > self.executed and slot.view == self.view
                    for seq, slot in self.slots.items())
                or self.mempool.has_executable(self.ledger) or self._ledger_timers_due())

    def _ledger_timers_due(self) -> bool:
        """A job's turn, deadline or window has passed: a block, even an empty one, is
        due (jobs are refunded and settled only by blocks; the agreed time is theirs)."""
        at_ms = self.ledger.next_timer_ms()
        return at_ms is not None and at_ms <= self.now_ms

    def _arm_ledger_timer(self, out: list[Effect]) -> None:
        """The primary wakes up when the ledger's next job timer comes due."""
        at_ms = self.ledger.next_timer_ms()
        if at_ms is not None and at_ms != self.ledger_timer_at:
            self.ledger_timer_at = at_ms
            self._timer(TimerKind.LEDGER, max(1, at_ms - self.now_ms), out)

    # -- checkpoints -----------------------------------------------------------------------

    def _on_checkpoint(self, message: Signed, out: list[Effect]) -> None:
        body: Checkpoint = message.body
        if body.seq > self.executed:
            self._request_state(message.signer, out)
        if body.seq <= self.stable_seq or body.seq % self.config.checkpoint_interval:
            return
        if body.seq > self.stable_seq + self.config.window_max:
            return
        self._record_checkpoint_vote(message, out)

    def _record_checkpoint_vote(self, message: Signed, out: list[Effect]) -> None:
        body: Checkpoint = message.body
        votes = self.checkpoint_votes.setdefault(body.seq, {})
        votes.setdefault(message.signer, message)
        matching = [votes[i] for i in sorted(votes) if votes[i].body.digest == body.digest]
        held = self.checkpoint_states.get(body.seq)
        if len(matching) >= self.quorum and held is not None and \
                held[0].block_hash == body.digest:
            self._make_stable(body.seq, held[0], held[1], tuple(matching[:self.quorum]), out)

    def _make_stable(self, seq: int, block: Block, state: LedgerState,
                     proof: tuple[Signed, ...], out: list[Effect]) -> None:
        if seq <= self.stable_seq:
            return
        self.stable_seq, self.stable_block, self.stable_proof = seq, block, proof
        self.stable_state = state
        out.append(PersistCheckpoint(seq=seq, block=block, proof=proof, state=state))
        for old in [s for s in self.slots if s <= seq]:
            del self.slots[old]
        for table in (self.prepares, self.commits):
            for key in [k for k in table if k[1] <= seq]:
                del table[key]
        for old in [s for s in self.checkpoint_votes if s <= seq]:
            del self.checkpoint_votes[old]
        for old in [s for s in self.checkpoint_states if s < seq]:
            del self.checkpoint_states[old]

    # -- equivocation, suspicion -----------------------------------------------------------

    def _record_equivocation(self, first: Signed, second: Signed, out: list[Effect]) -> None:
        evidence = Equivocation(first=first, second=second)
        if len(self.evidence) < self.config.evidence_max:
            self.evidence.append(evidence)
        out.append(EvidenceFound(evidence=evidence))
        out.append(PeerMisbehaved(peer=first.signer, reason="equivocating pre-prepares"))
        if first.body.view == self.view:
            self._suspect(out)

    def _suspect(self, out: list[Effect]) -> None:
        if self.phase is Phase.NORMAL:
            self._start_view_change(self.view + 1, Trigger.SUSPECT, out)

    def _view_change_timeout(self) -> int:
        timeout = self.config.view_change_timeout_ms << min(self.view_change_attempts, 16)
        return min(timeout, self.config.view_change_timeout_max_ms)

    # -- timers ----------------------------------------------------------------------------

    def _on_timer(self, timer: TimerId, out: list[Effect]) -> None:
        kind = timer.kind
        if timer.generation != self.timer_generation[kind]:
            return  # superseded
        self.timer_armed[kind] = False
        if kind is TimerKind.BATCH:
            self.batch_due = True
            self._maybe_propose(out)
            self.batch_due = False
        elif kind is TimerKind.PROGRESS:
            if self.phase is Phase.NORMAL and self.executed == self.progress_mark \
                    and self._work_pending():
                self._need_blocks(out)  # maybe the others moved to another epoch
                self._suspect(out)
        elif kind is TimerKind.VIEW_CHANGE:
            if self.phase is Phase.VIEW_CHANGE:
                self._start_view_change(self.view + 1, Trigger.TIMEOUT, out)
        elif kind is TimerKind.LEDGER:
            self.ledger_timer_at = None
            self._maybe_propose(out)
        elif kind is TimerKind.FORWARD:
            self._flush_forwards(out)
        elif kind is TimerKind.RETRANSMIT:
            if self.index is None:
                self._need_blocks(out)  # passive: follow
            else:
                if self.phase is Phase.VIEW_CHANGE:  # stuck: maybe the others moved on
                    self._need_blocks(out, self._view_change_timeout())
                self._retransmit(out)
            self._timer(TimerKind.RETRANSMIT, self.config.retransmit_interval_ms, out)
        # STATE_TRANSFER: expiry only re-allows a request (timer_armed is now False)

    def _arm_batch(self, out: list[Effect]) -> None:
        if (not self.timer_armed[TimerKind.BATCH] and self.phase is Phase.NORMAL
                and self.primary() == self.index
                and len(self.mempool)):
            self._timer(TimerKind.BATCH, self.config.batch_delay_ms, out)

    def _retransmit(self, out: list[Effect]) -> None:
        if self.phase is Phase.VIEW_CHANGE:
            out.append(Broadcast(message=self._view_change_message()))
            return
        for seq in sorted(self.slots):
            slot = self.slots[seq]
            if slot.view != self.view or seq < self.executed:
                continue
            if self.primary() == self.index:
                out.append(Broadcast(message=slot.pre_prepare))
            elif slot.prepare_sent:
                prepare = self.prepares.get((slot.view, seq), {}).get(self.index)
                out.append(Broadcast(message=prepare or self._sign(Prepare(
                    view=slot.view, seq=seq, digest=slot.block.block_hash))))
            mine = self.commits.get((slot.view, seq), {}).get(self.index)
            if mine is not None:
                out.append(Broadcast(message=mine))
        if self.own_checkpoint is not None:  # also tells a lagging replica it is behind
            out.append(Broadcast(message=self.own_checkpoint))
        if self.primary() != self.index:
            self._forward_stale(out)
        self.retransmit_mark = self.executed

    def statistics(self) -> ReplicaStatistics:
        counters = self.counters
        return ReplicaStatistics(
            epoch=self.epoch, validator_index=self.index, validators=self.n,
            messages_other_epoch=counters["messages_other_epoch"],
            messages_from_non_members=counters["messages_from_non_members"],
            blocks_fetched=counters["blocks_fetched"],
            blocks_rejected=counters["blocks_rejected"], view=self.view,
            phase=self.phase.value, executed_height=self.executed,
            stable_seq=self.stable_seq, mempool_size=len(self.mempool),
            view_changes_started=self.counters["view_changes_started"],
            peer_errors=self.counters["peer_errors"], evidence=len(self.evidence),
            state_transfers=self.counters["state_transfers"],
            signatures_verified=self.cache.verified, signature_cache_hits=self.cache.hits)
