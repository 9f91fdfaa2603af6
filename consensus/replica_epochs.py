"""Validator-set changes at epoch boundaries (a mixin of ``Replica``; issue #4).

Rules (besides those of ``replica.py``):
1. The configuration that agrees block h is the one of the committed state after h-1:
   ``LedgerState.validators`` and ``LedgerState.epoch`` (the height after which that set
   took over; 0 = genesis). Both are in the state root, so every honest replica that
   executed h-1 derives the same configuration for h, and a certificate of h is checked
   against exactly that set (``SignatureCache`` is bound to one epoch).
2. Every signed PBFT message carries its epoch (``messages.py``). A message of another
   epoch is dropped before any signature check and never blamed on its sender (counted in
   ``messages_other_epoch``); one from a newer epoch means we are behind: ``NeedBlocks``.
3. Reconfiguration (``_configure`` and ``_reconfigure``) is a pure, deterministic step taken
   when a committed state (executed, fetched, installed or recovered) has another epoch
   than ours: new n, f, quorum, signature cache and own index (None = passive: no votes,
   no proposals, no checkpoints; it keeps its ledger current with ``NeedBlocks`` on every
   retransmit tick), view 0 in phase NORMAL, every slot, vote, view change and checkpoint
   of the old epoch forgotten, timers re-armed, and the block that installed the set
   becomes the new epoch's first stable checkpoint (``PersistCheckpoint`` with no proof:
   like genesis, every member executed it before it could speak in the epoch). The new
   view and epoch are persisted (``PersistView.epoch``) before anything is said in the
   epoch, and recovery drops a view, slots or a checkpoint proof of another epoch.
4. Crossing epochs: index-based STATE-REQUEST/REPLY stay inside one epoch. Across one, the
   core emits ``NeedBlocks(from)`` and the shell feeds back ``CertifiedBlocksReceived``;
   each block's certificate is checked against the configuration of its own height (the
   state before it), in height order, and re-executed (the state root must match).

Safety argument. Within an epoch this is PBFT over a fixed set (Castro & Liskov). Across
the boundary block b: b is agreed by the old set and carries the new set in its state
root, so all honest replicas that commit b switch to the same set at the same height.
No replica votes on b+1 before executing b (the primary proposes seq only after executing
seq-1; a backup prepares only seq <= executed+1), so every vote for a block above b is
cast in epoch b, and old-epoch messages cannot count toward it (rule 2). An old-epoch
replica that has not committed b cannot be talked into another block at b: any old-epoch
quorum for a new view intersects the f+1 honest replicas that prepared b, and those that
moved on send no old-epoch view changes, so such a new view can only carry b itself or
never form. The chain from genesis then has one certified block per height, each checked
against the set its predecessor's state names; followers check it the same way.
Liveness needs a quorum of each new set to be up and to execute b, which they do by
normal commit or, if they missed b, by ``NeedBlocks``.

Why not a STATE-REQUEST across epochs: its reply is signed by an index of one epoch and
its checkpoint proof by one set; certified blocks checked height by height need neither,
and the shell already serves them to followers (``/prsm/ledger/1.0.0``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from consensus.certificates import (
    CertificateError,
    SignatureCache,
    check_commit_certificate,
    fault_tolerance,
    quorum_size,
)
from consensus.ledger import Block, BlockInvalid, LedgerState
from consensus.messages import Checkpoint, Signed
from consensus.replica_effects import (
    CertifiedBlocksReceived,
    ClientRejected,
    ClientRequest,
    NeedBlocks,
    PersistCheckpoint,
    PersistView,
    Recovered,
    TimerKind,
    ValidatorsChanged,
)
from consensus.replica_view import Phase

if TYPE_CHECKING:
    from consensus.replica import Replica, Slot


class Epochs:
    """Methods of ``Replica`` for configurations and crossing epoch boundaries."""

    def _configure(self: Replica, state: LedgerState) -> None:
        """Derive the configuration from a committed state (pure: rule 3)."""
        self.validators = state.validators
        self.epoch = state.epoch
        self.n = len(self.validators)
        self.f = fault_tolerance(self.n)
        self.quorum = quorum_size(self.n, self.config.planted_bug)
        self.cache = SignatureCache(self.validators, self.config.signature_cache_max,
                                    self.epoch)
        key = self.signer.public_key
        self.index = self.validators.index(key) if key in self.validators else None

    def _reconfigure(self: Replica, block: Block, state: LedgerState, out: list[Any]) -> None:
        """``state`` (after ``block``) names another configuration: switch to it."""
        assert state.epoch != self.epoch and state.height == block.height
        self._configure(state)
        self._forget_epoch()
        self.stable_seq, self.stable_block, self.stable_state = state.height, block, state
        self.stable_proof = ()
        out.append(PersistView(view=0, in_view_change=False, epoch=self.epoch))
        out.append(PersistCheckpoint(seq=state.height, block=block, proof=(), state=state))
        out.append(ValidatorsChanged(epoch=self.epoch, validators=self.validators,
                                     index=self.index))
        self.counters["reconfigurations"] += 1
        if self.index is not None:  # tells lagging members of the new set we moved on
            self.own_checkpoint = self._sign(Checkpoint(seq=state.height,
                                                        digest=block.block_hash))

    def _forget_epoch(self: Replica) -> None:
        """View 0, phase NORMAL, nothing of the old epoch's slots, votes, view changes or
        checkpoints, and every timer but RETRANSMIT superseded (rule 3)."""
        self.view = 0
        self.phase = Phase.NORMAL
        self.slots.clear()
        self.prepares.clear()
        self.commits.clear()
        self.checkpoint_votes.clear()
        self.checkpoint_states.clear()
        self.own_checkpoint = None
        self.view_changes.clear()
        self.view_change_attempts = 0
        self.own_view_changes.clear()
        self.last_new_view = None
        self.new_view_sent_ms.clear()
        self._view_change_cache = None
        self.forward_pending = []
        self.batch_due = False
        self.ledger_timer_at = None
        for kind in TimerKind:
            if kind is not TimerKind.RETRANSMIT:
                self.timer_generation[kind] += 1
                self.timer_armed[kind] = False

    def _recover_epoch(self: Replica, recovered: Recovered) -> None:
        """Take from the store only what belongs to the recovered ledger's epoch."""
        from consensus.replica import Slot  # a cycle: replica.py imports this mixin

        if recovered.view_epoch == self.epoch:
            self.view = recovered.view
            self.phase = Phase.VIEW_CHANGE if recovered.in_view_change else Phase.NORMAL
        if recovered.stable_seq == self.epoch:  # the epoch's start: no proof (rule 3)
            self.stable_seq, self.stable_block = recovered.stable_seq, recovered.stable_block
            self.stable_state = recovered.stable_state
        elif recovered.stable_seq > self.epoch and all(
                p.epoch == self.epoch for p in recovered.stable_proof):
            self.stable_seq, self.stable_block = recovered.stable_seq, recovered.stable_block
            self.stable_proof = recovered.stable_proof
            self.stable_state = recovered.stable_state
        elif self.ledger.height:  # the epoch's start (or, unknown, our head) without proof
            head = recovered.recent_blocks[-1][0] if recovered.recent_blocks else None
            if head is not None and head.height == self.ledger.height:
                self.stable_seq, self.stable_block = head.height, head
                self.stable_state = self.ledger
        slots: dict[int, Slot] = {}
        for record in recovered.slots:
            if record.seq > self.stable_seq and record.pre_prepare.epoch == self.epoch:
                slots[record.seq] = Slot(record.pre_prepare, record.prepared)
        self.slots = slots

    def _reported_stable(self: Replica) -> tuple[int, tuple[Signed, ...]]:
        """The stable checkpoint we can prove in this epoch: ours, or the epoch's start
        when ours has no proof (a follower turned validator starts at its head)."""
        if self.stable_proof or self.stable_seq == self.epoch:
            return self.stable_seq, self.stable_proof
        return self.epoch, ()

    # -- other epochs, non-members, passive replicas ----------------------------------------

    def _other_epoch(self: Replica, message: Signed, out: list[Any]) -> bool:
        """Drop (unverified, unblamed) a message of another epoch; True if dropped."""
        if message.epoch == self.epoch:
            return False
        self.counters["messages_other_epoch"] += 1
        if message.epoch > self.epoch:
            self._need_blocks(out)
        return True

    def _need_blocks(self: Replica, out: list[Any], interval_ms: int | None = None) -> None:
        """Ask the shell for certified blocks, at most once per ``interval_ms`` (default:
        the retransmit interval; a stuck view change asks once per view-change timeout,
        which keeps a busy network from fetching on every tick)."""
        last = self.need_blocks_ms
        wait_ms = self.config.retransmit_interval_ms if interval_ms is None else interval_ms
        if last is not None and self.now_ms - last < wait_ms:
            return
        self.need_blocks_ms = self.now_ms
        out.append(NeedBlocks(from_height=self.executed + 1))

    def _on_passive_input(self: Replica, event: object, out: list[Any]) -> None:
        """A non-member only executes certified blocks and keeps asking for them."""
        if type(event) is ClientRequest:
            out.append(ClientRejected(request_id=event.request_id, tx_hash=None,  # type: ignore[attr-defined]
                                      reason_code="not_validator",
                                      message="this node is not in the validator set"))

    def _on_certified_blocks(self: Replica, event: CertifiedBlocksReceived,
                             out: list[Any]) -> None:
        """Execute fetched blocks in height order, each checked against the configuration
        of the state before it (rule 4); stop at the first that fails."""
        for certified in event.blocks:
            block = certified.block
            if block.height <= self.executed:
                continue
            if block.height != self.executed + 1:
                break
            try:
                check_commit_certificate(block, certified.certificate, self.cache,
                                         self.quorum)
                state = self.ledger.apply_block(block)
            except (CertificateError, BlockInvalid):
                self.counters["blocks_rejected"] += 1
                break
            self.counters["blocks_fetched"] += 1
            self._execute(block, certified.certificate, state, out)
        if self.index is not None:
            self._validate(out)
