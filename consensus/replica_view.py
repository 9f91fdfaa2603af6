"""The replica's view change, new view and state transfer (a mixin of ``Replica``).

Rules: those of ``replica.py`` (this file is split from it only for size). The phase
``Enum`` and its one transition table live here, beside the code that changes phases.

View change (Castro & Liskov, section 4.4): on suspicion a replica moves to view v+1,
persists that, and broadcasts VIEW-CHANGE (stable checkpoint proof + prepared proofs). The
primary of v+1 collects 2f+1, computes the re-issued pre-prepares with
``view_change.select``, persists them and the view, and broadcasts NEW-VIEW; backups check
it by recomputing ``select``. f+1 view changes for higher views make a replica join the
smallest (section 4.5.2). The new primary answers a stale VIEW-CHANGE with its NEW-VIEW,
so a replica that lost the NEW-VIEW catches up without another view change.

State transfer: a replica that sees a sequence number past its next one asks that peer
(STATE-REQUEST with its executed height). The peer answers with the blocks after it,
each with its commit certificate, or, when those are gone, with its stable checkpoint
(block, 2f+1 CHECKPOINT signatures, ledger snapshot) and the blocks after that. Everything
is verified before use; one request is in flight at a time (``state_transfer_timeout_ms``).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from consensus.certificates import (
    CertificateError,
    check_checkpoint_proof,
    check_commit_certificate,
)
from consensus.errors import PeerProtocolError
from consensus.ledger import BlockInvalid, LedgerState
from consensus.messages import (
    NewView,
    PrePrepare,
    Signed,
    StateReply,
    StateRequest,
    ViewChange,
)
from consensus.replica_effects import Broadcast, PersistView, Send, TimerKind
from consensus.view_change import check_view_change, select, stable_checkpoint_of

if TYPE_CHECKING:
    from consensus.replica import Replica

VIEW_CHANGE_VIEWS_MAX = 8
"""View changes kept for views up to current + this; a Byzantine replica cannot make us
store view changes for arbitrarily many future views."""


class Phase(enum.Enum):
    NORMAL = "normal"
    VIEW_CHANGE = "view_change"


class Trigger(enum.Enum):
    SUSPECT = "suspect"  # progress timeout, or the primary misbehaved
    TIMEOUT = "timeout"  # the new view did not come in time
    JOIN = "join"  # f+1 view changes for higher views
    NEW_VIEW = "new_view"  # a valid NEW-VIEW accepted (or built)


TRANSITIONS: dict[Phase, dict[Trigger, Phase]] = {
    Phase.NORMAL: {Trigger.SUSPECT: Phase.VIEW_CHANGE, Trigger.JOIN: Phase.VIEW_CHANGE,
                   Trigger.NEW_VIEW: Phase.NORMAL},
    Phase.VIEW_CHANGE: {Trigger.TIMEOUT: Phase.VIEW_CHANGE, Trigger.JOIN: Phase.VIEW_CHANGE,
                        Trigger.NEW_VIEW: Phase.NORMAL},
}


class ViewChangeAndTransfer:
    """Methods of ``Replica`` for view changes and state transfer."""

    # -- view change -----------------------------------------------------------------------

    def _start_view_change(self: Replica, new_view: int, trigger: Trigger,
                           out: list[Any]) -> None:
        if new_view <= self.view and self.phase is Phase.VIEW_CHANGE:
            return
        self._transition(trigger)
        self.view = new_view
        self.counters["view_changes_started"] += 1
        if trigger is Trigger.TIMEOUT:
            self.view_change_attempts += 1
        for table in (self.prepares, self.commits):
            for key in [k for k in table if k[0] < new_view]:
                del table[key]
        for old in [v for v in self.view_changes if v < new_view]:
            del self.view_changes[old]
        self.timer_generation[TimerKind.PROGRESS] += 1
        self.timer_armed[TimerKind.PROGRESS] = False
        message = self._view_change_message()
        self.view_changes.setdefault(new_view, {})[self.index] = message
        self.own_view_changes[new_view] = message
        while len(self.own_view_changes) > VIEW_CHANGE_VIEWS_MAX:
            self.own_view_changes.popitem(last=False)
        out.append(PersistView(view=new_view, in_view_change=True, epoch=self.epoch))
        out.append(Broadcast(message=message))
        self.timer_generation[TimerKind.VIEW_CHANGE] += 1
        self.timer_armed[TimerKind.VIEW_CHANGE] = False
        self._arm_view_change_timer(out)
        self._maybe_build_new_view(out)

    def _arm_view_change_timer(self: Replica, out: list[Any]) -> None:
        """Castro & Liskov 4.5.2: the timer for view v starts only once 2f+1 replicas are
        in view v; a replica alone in a view change must not race through views."""
        if (self.phase is Phase.VIEW_CHANGE and not self.timer_armed[TimerKind.VIEW_CHANGE]
                and len(self.view_changes.get(self.view, ())) >= self.quorum):
            self._timer(TimerKind.VIEW_CHANGE, self._view_change_timeout(), out)

    def _view_change_message(self: Replica) -> Signed:
        prepared = tuple(self.slots[seq].prepared for seq in sorted(self.slots)
                         if seq > self.stable_seq and self.slots[seq].prepared is not None
                         and self.slots[seq].prepared.pre_prepare.body.view < self.view)
        key = (self.view, self.stable_seq, len(prepared))
        cached = self._view_change_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        stable_seq, proof = self._reported_stable()
        message = self._sign(ViewChange(new_view=self.view, stable_seq=stable_seq,
                                        checkpoint_proof=proof,
                                        prepared=prepared))  # type: ignore[arg-type]
        self._view_change_cache = (key, message)
        return message

    def _on_view_change(self: Replica, message: Signed, out: list[Any]) -> None:
        view = message.body.new_view
        if view < self.view or (view == self.view and self.phase is Phase.NORMAL):
            self._help_behind(message.signer, view, out)
            return
        if view > self.view + VIEW_CHANGE_VIEWS_MAX:
            return
        try:
            check_view_change(message, view, self.cache, self.quorum, self.n)
        except CertificateError as error:
            raise PeerProtocolError(message.signer, f"view change: {error}") from error
        self.view_changes.setdefault(view, {})[message.signer] = message
        self._join_if_needed(out)
        self._arm_view_change_timer(out)
        self._maybe_build_new_view(out)

    def _help_behind(self: Replica, peer: int, view: int, out: list[Any]) -> None:
        """``peer`` is still changing to ``view``, below ours: resend what it may have lost
        (at most once per retransmit interval per peer): the NEW-VIEW of our view if we
        are its primary, and our own VIEW-CHANGE for its view if we sent one, since we
        moved on before its primary could collect a quorum."""
        last = self.new_view_sent_ms.get(peer)
        if last is not None and self.now_ms - last < self.config.retransmit_interval_ms:
            return
        self.new_view_sent_ms[peer] = self.now_ms
        new_view = self.last_new_view
        if (self.phase is Phase.NORMAL and self.primary() == self.index
                and new_view is not None and new_view.body.view == self.view):
            out.append(Send(to=peer, message=new_view))
        own = self.own_view_changes.get(view)
        if own is not None and view < self.view:
            out.append(Send(to=peer, message=own))

    def _join_if_needed(self: Replica, out: list[Any]) -> None:
        lowest: dict[int, int] = {}
        for view, messages in self.view_changes.items():
            if view > self.view:
                for signer in messages:
                    if signer != self.index:
                        lowest[signer] = min(lowest.get(signer, view), view)
        if len(lowest) >= self.f + 1:
            self._start_view_change(min(lowest.values()), Trigger.JOIN, out)

    def _maybe_build_new_view(self: Replica, out: list[Any]) -> None:
        view = self.view
        if self.phase is not Phase.VIEW_CHANGE or self.primary(view) != self.index:
            return
        messages = self.view_changes.get(view, {})
        if len(messages) < self.quorum:
            return
        chosen = tuple(messages[i] for i in sorted(messages))
        selected = select(chosen)
        if selected is None:
            return  # a gap: wait for other view changes (see view_change.py, rule 3)
        _, blocks = selected
        pre_prepares = tuple(self._sign(PrePrepare(view=view, seq=b.height, block=b))
                             for b in blocks)
        new_view = self._sign(NewView(view=view, view_changes=chosen,
                                      pre_prepares=pre_prepares))
        self.last_new_view = new_view
        self._enter_view(view, chosen, pre_prepares, out)
        out.append(Broadcast(message=new_view))  # after _enter_view persisted view and slots

    def _on_new_view(self: Replica, message: Signed, out: list[Any]) -> None:
        body: NewView = message.body
        view = body.view
        if message.signer != self.primary(view):
            raise PeerProtocolError(message.signer, "new view from a non-primary")
        if view < self.view or (view == self.view and self.phase is Phase.NORMAL):
            return
        if view > self.view + VIEW_CHANGE_VIEWS_MAX:
            return
        signers: set[int] = set()
        try:
            for change in body.view_changes:
                self._verify(change, message.signer)
                check_view_change(change, view, self.cache, self.quorum, self.n)
                signers.add(change.signer)
        except CertificateError as error:
            raise PeerProtocolError(message.signer, f"new view: {error}") from error
        selected = select(body.view_changes)
        if len(signers) < self.quorum or len(signers) != len(body.view_changes) \
                or selected is None:
            raise PeerProtocolError(message.signer, "new view without a quorum or with a gap")
        blocks = selected[1]
        if len(blocks) != len(body.pre_prepares):
            raise PeerProtocolError(message.signer, "new view re-issues other slots")
        for pre_prepare, block in zip(body.pre_prepares, blocks, strict=True):
            self._verify(pre_prepare, message.signer)
            inner = pre_prepare.body
            if (type(inner) is not PrePrepare or inner.view != view or inner.seq != block.height
                    or inner.block.block_hash != block.block_hash
                    or pre_prepare.signer != message.signer):
                raise PeerProtocolError(message.signer, "new view pre-prepare differs")
        self.last_new_view = message
        self._enter_view(view, body.view_changes, body.pre_prepares, out)

    def _enter_view(self: Replica, view: int, view_changes: tuple[Signed, ...],
                    pre_prepares: tuple[Signed, ...], out: list[Any]) -> None:
        self._transition(Trigger.NEW_VIEW)
        self.view = view
        self.timer_generation[TimerKind.VIEW_CHANGE] += 1
        self.timer_armed[TimerKind.VIEW_CHANGE] = False
        out.append(PersistView(view=view, in_view_change=False, epoch=self.epoch))
        for table in (self.prepares, self.commits):
            for key in [k for k in table if k[0] < view]:
                del table[key]
        for old in [v for v in self.view_changes if v <= view]:
            del self.view_changes[old]
        source = stable_checkpoint_of(view_changes)
        if source.body.stable_seq > self.executed and source.signer != self.index:
            self._request_state(source.signer, out)
        for pre_prepare in pre_prepares:
            if not self._in_window(pre_prepare.body.seq):
                continue
            try:
                self._accept_pre_prepare(pre_prepare, out)
            except PeerProtocolError as error:  # a peer's NEW-VIEW: its fault; ours: a bug
                assert pre_prepare.signer != self.index, f"own new view: {error.reason}"
                raise

    # -- state transfer --------------------------------------------------------------------

    def _note_behind(self: Replica, seq: int, view: int, peer: int, out: list[Any]) -> None:
        """Ask ``peer`` for blocks when it talks about a seq we cannot reach by voting: past
        our next one, or our next one in a view we are not in."""
        if seq > self.executed + 1 or (seq > self.executed and (
                view != self.view or self.phase is not Phase.NORMAL)):
            self._request_state(peer, out)

    def _request_state(self: Replica, peer: int, out: list[Any]) -> None:
        if self.timer_armed[TimerKind.STATE_TRANSFER] or peer == self.index:
            return
        self.counters["state_transfers"] += 1
        out.append(Send(to=peer, message=self._sign(StateRequest(height=self.executed))))
        self._timer(TimerKind.STATE_TRANSFER, self.config.state_transfer_timeout_ms, out)

    def _on_state_request(self: Replica, message: Signed, out: list[Any]) -> None:
        start = message.body.height + 1
        if start > self.executed:
            return
        checkpoint_block, proof, snapshot = None, (), None
        oldest = min(self.recent) if self.recent else self.executed + 1
        if start < oldest:
            if self.stable_block is None or self.stable_state is None \
                    or not self.stable_proof:  # the epoch's start: others have it
                return
            checkpoint_block, proof = self.stable_block, self.stable_proof
            snapshot = self.stable_state.snapshot()
            start = self.stable_seq + 1
        last = min(self.executed, start + self.config.state_transfer_blocks_max - 1)
        blocks = tuple(self.recent[h] for h in range(start, last + 1) if h in self.recent)
        out.append(Send(to=message.signer, message=self._sign(StateReply(
            checkpoint_block=checkpoint_block, checkpoint_proof=proof, snapshot=snapshot,
            blocks=blocks))))

    def _on_state_reply(self: Replica, message: Signed, out: list[Any]) -> None:
        body: StateReply = message.body
        peer = message.signer
        block = body.checkpoint_block
        if block is not None and block.height > self.executed:
            try:
                digest = check_checkpoint_proof(block.height, body.checkpoint_proof,
                                                self.cache, self.quorum)
                state = LedgerState.from_snapshot(self.genesis, body.snapshot)
            except (CertificateError, BlockInvalid, TypeError, ValueError) as error:
                raise PeerProtocolError(peer, f"state reply checkpoint: {error}") from error
            if (digest != block.block_hash or state.state_root != block.state_root
                    or state.height != block.height
                    or state.last_block_hash != block.block_hash):
                raise PeerProtocolError(peer, "state reply snapshot does not match its block")
            self._execute(block, (), state, out, snapshot_installed=True)
            self._make_stable(block.height, block, state, body.checkpoint_proof, out)
        for certified in body.blocks:
            if certified.block.height != self.executed + 1:
                continue
            try:
                check_commit_certificate(certified.block, certified.certificate, self.cache,
                                         self.quorum)
                state = self.ledger.apply_block(certified.block)
            except (CertificateError, BlockInvalid) as error:
                raise PeerProtocolError(peer, f"state reply block: {error}") from error
            self._execute(certified.block, certified.certificate, state, out)
        self.timer_armed[TimerKind.STATE_TRANSFER] = False
        self.timer_generation[TimerKind.STATE_TRANSFER] += 1
        self._validate(out)
