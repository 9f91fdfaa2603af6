"""Typed errors of the consensus core, by whose fault they are (STYLE.md, house rule 5).

Rules:
1. ``PeerProtocolError(peer, reason)`` is the only error a validator's message can cause.
   ``Replica.handle`` catches it at its one receive path, counts it in ``statistics()`` and
   returns a ``PeerMisbehaved`` effect so the shell can score the peer; it never escapes.
2. ``TxRejected(reason_code, message)`` says why a transaction was refused. Its
   ``reason_code`` is a short stable tag (``REASON_CODES``) the control API maps to an error
   code; its message says what to do about it. A refused transaction never changes state.
3. ``GenesisError`` and ``StoreError`` are operator errors (a bad genesis file, a data dir
   from another chain); the shell stops with the message.
4. Anything else (AssertionError, KeyError, ...) is our bug and must crash.
"""

from __future__ import annotations

REASON_CODES = frozenset({
    "malformed", "oversize", "bad_signature", "wrong_chain", "bad_nonce", "nonce_gap",
    "fee_too_low", "insufficient_balance", "insufficient_stake", "bad_amount",
    "unbonding_full", "ledger_full", "already_validator", "mempool_full", "sender_quota",
    "duplicate",
    # the job market (consensus/ledger_jobs.py)
    "bad_args", "unknown_model", "unknown_job", "not_owner", "not_worker", "not_submitter",
    "not_assignee", "job_state", "window_closed", "no_worker", "no_verifiers", "worker_busy",
    "price_above_max",
})


class ConsensusError(Exception):
    """Base class of the consensus core's typed errors."""


class PeerProtocolError(ConsensusError):
    """A validator sent something malformed, forged or out of protocol."""

    def __init__(self, peer: int | bytes, reason: str) -> None:
        shown = peer.hex()[:16] if isinstance(peer, bytes) else str(peer)
        super().__init__(f"peer {shown}: {reason}")
        self.peer = peer
        self.reason = reason


class TxRejected(ConsensusError):
    """A transaction was refused; ``reason_code`` is one of ``REASON_CODES``."""

    def __init__(self, reason_code: str, message: str) -> None:
        assert reason_code in REASON_CODES, reason_code
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


class GenesisError(ConsensusError):
    """The genesis document is invalid; the message names the field."""


class StoreError(ConsensusError):
    """The on-disk store is unusable (another chain, corrupt rows)."""


class ReplicaStateError(ConsensusError):
    """An input arrived in a replica phase with no transition for it (our bug)."""
