"""How client transactions reach a block and how clients hear back (a mixin of ``Replica``).

Rules: those of ``replica.py`` (split from it for size). A client's transaction enters
this replica's mempool (every check), is handed to every other replica in batched
FORWARDs (as CometBFT gossips its mempool), and its client is answered when a block holding
it executes. Every replica thus decodes and verifies each transaction when it arrives, off
the critical path: a backup checking a pre-prepare finds the block's wire bytes in its
mempool (``Mempool.known``) instead of verifying 500 signatures while the primary waits;
and after a view change the new primary already holds the backlog. If nothing commits it in time,
PBFT's client rule applies: the transaction goes to every replica, whose progress timers
then run, so a silent or censoring primary is voted out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.errors import PeerProtocolError, TxRejected
from consensus.ledger import Block
from consensus.messages import Forward, Signed
from consensus.replica_effects import (
    Broadcast,
    ClientCommitted,
    ClientRejected,
    ClientRequest,
    Effect,
    TimerKind,
)
from consensus.replica_view import Phase

if TYPE_CHECKING:
    from consensus.replica import Replica


class ClientTransactions:
    """Methods of ``Replica`` for client transactions."""

    def _on_client_request(self: Replica, event: ClientRequest, out: list[Effect]) -> None:
        try:
            tx = self.mempool.admit(event.tx, self.ledger, self.now_ms)
        except TxRejected as error:
            out.append(ClientRejected(request_id=event.request_id, tx_hash=None,
                                      reason_code=error.reason_code, message=error.message))
            return
        if event.request_id is not None:
            self.requests[tx.tx_hash] = event.request_id
            if len(self.requests) > self.config.requests_tracked_max:
                self.requests.popitem(last=False)
        if self.phase is Phase.NORMAL:
            self._queue_forward(tx.encoded, out)

    def _queue_forward(self: Replica, encoded: bytes, out: list[Effect]) -> None:
        """Clients' transactions go out in batches: one signed FORWARD per transaction cost
        a signature, a verification and a round trip each."""
        self.forward_pending.append(encoded)
        if len(self.forward_pending) >= self.config.forward_batch_max:
            self._flush_forwards(out)
        elif not self.timer_armed[TimerKind.FORWARD]:
            self._timer(TimerKind.FORWARD, self.config.forward_delay_ms, out)

    def _flush_forwards(self: Replica, out: list[Effect]) -> None:
        pending, self.forward_pending = self.forward_pending, []
        if pending and self.phase is Phase.NORMAL:
            out.append(Broadcast(message=self._sign(Forward(txs=tuple(pending)))))
        # otherwise the stale-transaction rule (``_forward_stale``) sends them later

    def _on_forward(self: Replica, message: Signed) -> None:
        txs = message.body.txs
        if len(txs) > self.config.forward_batch_max:
            raise PeerProtocolError(message.signer, f"forward of {len(txs)} transactions")
        for data in txs:
            try:
                self.mempool.admit(data, self.ledger, self.now_ms)
            except TxRejected:
                continue  # stale or duplicate: the forwarder may know less than we do

    def _answer_clients(self: Replica, block: Block, out: list[Effect]) -> None:
        """Runs before the mempool is pruned, so a waiting client's transaction is still
        pending and its hash is found from its wire bytes without decoding the block."""
        if not self.requests:
            return
        for data in block.txs:
            tx_hash = self.mempool.pending_hash(data)
            request_id = self.requests.pop(tx_hash, None) if tx_hash is not None else None
            if request_id is not None:
                out.append(ClientCommitted(request_id=request_id, tx_hash=tx_hash,
                                           height=block.height))

    def _forward_stale(self: Replica, out: list[Effect]) -> None:
        """PBFT's client rule: no reply in time, so tell every replica; their progress
        timers then run too, and a silent primary is voted out. While blocks commit the
        primary is alive, only backlogged: then only transactions older than a view-change
        timeout go out (a primary that censors them), not the whole backlog on every tick,
        which under load had every replica decoding and verifying it again."""
        progressed = self.executed != self.retransmit_mark
        age_ms = self._view_change_timeout() if progressed else self.config.retransmit_interval_ms
        stale = self.mempool.older_than(self.now_ms - age_ms, self.config.forward_batch_max)
        if stale:
            out.append(Broadcast(message=self._sign(
                Forward(txs=tuple(t.encoded for t in stale)))))
