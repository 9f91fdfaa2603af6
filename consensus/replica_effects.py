"""The PBFT replica's vocabulary: configuration, inputs, effects, recovery state, statistics.

Rules:
1. Every input and effect is a frozen, slotted, keyword-only dataclass.
2. Every limit is a ``ReplicaConfig`` field with a ``*_max`` or unit suffix and a reason;
   ``__post_init__`` checks how they relate and names the field.

The shell's contract (what ``prsm_node`` or the simulator must do with each effect):
- Effects are performed IN LIST ORDER. Every ``Persist*`` effect must be durable (SQLite
  transaction committed, WAL synced) before any later effect of the same list is performed.
  The replica places each ``Persist*`` before the ``Send``/``Broadcast`` whose content
  depends on it (a pre-prepare, prepare or commit for a slot, a view change for a view, a
  checkpoint for a block), so a replica killed at any point never contradicts after restart
  what it said before. ``ClientCommitted`` comes after the ``PersistBlock`` of its block.
- ``Send(to, message)`` / ``Broadcast(message)``: encode (``messages.encode_frame``) and
  send to replica ``to`` / every other replica; feed what arrives as ``MessageReceived``.
  Loss is tolerated (the replica retransmits on its own timer).
- ``SetTimer(timer, at_ms)``: at ``at_ms`` feed ``TimerFired(timer)``; never cancelled.
- ``PersistView(view, in_view_change)``, ``PersistSlot(record)``, ``PersistCheckpoint(seq,
  block, proof)``, ``PersistBlock(block, certificate, state)``: write to the store
  (``consensus.store.LedgerStore``); at start, ``LedgerStore.recover()`` gives the
  ``Recovered`` to build the replica with.
- ``BlockCommitted(block, certificate)``: give the block to followers and subscribers.
- ``ClientCommitted`` / ``ClientRejected``: answer the control-API call ``request_id``.
- ``EvidenceFound(evidence)``: log it and keep it (equivocation proof, two signed messages).
- ``PeerMisbehaved(peer, reason)``: score the peer down.
- ``ValidatorsChanged(epoch, validators, index)``: the configuration changed (also emitted
  at ``Start``): from now on replica index i is ``validators[i]``; map peers to indices by
  it, drop frames from non-members, and if ``index`` is None this node is passive (no votes;
  it keeps its ledger current by ``NeedBlocks``).
- ``NeedBlocks(from_height)``: we are behind across an epoch (or passive, or stuck): fetch
  certified blocks from ``from_height`` on from any node and feed them back as
  ``CertifiedBlocksReceived`` (the core checks every certificate; the source is untrusted).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from consensus.ledger import Block, LedgerState
from consensus.messages import CertifiedBlock, PreparedProof, Signed


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaConfig:
    """Every limit of the replica (node.toml.example ``[pbft]`` mirrors these names)."""

    checkpoint_interval: int = 16
    """K in the paper: blocks between checkpoints (Castro & Liskov used 128 for 1-op
    requests; our blocks hold up to 500 transactions, so 16 blocks is ~8,000)."""
    window_max: int = 64
    """L: sequence numbers accepted above the stable checkpoint (the paper: L = 2K);
    must exceed the checkpoint interval so progress never stalls at a checkpoint."""
    batch_delay_ms: int = 20
    """How long the primary waits to fill a block; 20 ms keeps p50 latency low."""
    forward_delay_ms: int = 20
    """How long a replica gathers its clients' transactions into one FORWARD (each costs a
    signature, three verifications and a frame to every replica). Measured on 4 processes
    at 2,000 tx/s offered (BENCHMARKS.md, session 5): 20 ms instead of 5 gave p50 88-101
    ms instead of 137-346 and ~8% less CPU per transaction; at 1,000 tx/s p50 rose from
    54 to 74 ms."""
    view_change_timeout_ms: int = 2_000
    """No progress for this long with work pending: suspect the primary. Doubles per
    failed view change (the paper's exponential back-off)."""
    view_change_timeout_max_ms: int = 60_000
    retransmit_interval_ms: int = 500
    """Re-send our messages for unfinished slots, our view change and our last checkpoint."""
    state_transfer_timeout_ms: int = 1_000
    state_transfer_blocks_max: int = 64
    mempool_max: int = 20_000
    mempool_per_sender_max: int = 64
    forward_batch_max: int = 500
    signature_cache_max: int = 65_536
    """Verified (encoded, signature) digests; ~3n messages per block at n=100 fit many times."""
    blocks_retained_max: int = 256
    """Committed blocks kept in memory to answer state requests (older: from the checkpoint)."""
    evidence_max: int = 64
    requests_tracked_max: int = 20_000
    clock_skew_max_ms: int = 10_000
    """A proposed block's timestamp may be at most this far ahead of our clock."""
    planted_bug: str = ""
    """Simulation only: ``"quorum-2f"`` uses 2f instead of 2f+1 (the checker must catch it)."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "planted_bug" and value < 1:
                raise ValueError(f"pbft config: {field.name} must be >= 1")
        if self.window_max <= self.checkpoint_interval:
            raise ValueError("pbft config: window_max must be > checkpoint_interval")
        if self.blocks_retained_max < self.window_max:
            raise ValueError("pbft config: blocks_retained_max must be >= window_max (state "
                             "transfer serves every block above the stable checkpoint)")
        if self.view_change_timeout_ms <= 2 * self.retransmit_interval_ms:
            raise ValueError("pbft config: view_change_timeout_ms must be > "
                             "2 x retransmit_interval_ms")
        if self.planted_bug not in ("", "quorum-2f"):
            raise ValueError("pbft config: planted_bug must be '' or 'quorum-2f'")


class TimerKind(enum.Enum):
    BATCH = "batch"
    PROGRESS = "progress"
    VIEW_CHANGE = "view_change"
    RETRANSMIT = "retransmit"
    STATE_TRANSFER = "state_transfer"
    FORWARD = "forward"
    LEDGER = "ledger"  # a job timer of the ledger comes due: propose a block, even empty


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerId:
    kind: TimerKind
    generation: int


# -- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Start:
    """Fed once after construction: arms the timers and asks peers for missed blocks."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    peer: int | None
    """Replica index of the authenticated connection it came from, in the receiver's
    current configuration; None: the sender is not a member (only its epoch is read)."""
    message: Signed


@dataclass(frozen=True, slots=True, kw_only=True)
class CertifiedBlocksReceived:
    """Blocks the shell fetched after a ``NeedBlocks`` (from any node: untrusted)."""

    blocks: tuple[CertifiedBlock, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRequest:
    tx: bytes
    request_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    timer: TimerId


# -- effects ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    to: int
    message: Signed


@dataclass(frozen=True, slots=True, kw_only=True)
class Broadcast:
    message: Signed


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    timer: TimerId
    at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotRecord:
    """What a replica said about one sequence number (persisted before it is said)."""

    seq: int
    view: int
    pre_prepare: Signed
    prepared: PreparedProof | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistView:
    view: int
    in_view_change: bool
    epoch: int = 0
    """The configuration the view belongs to: a view of an older epoch is not recovered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistSlot:
    record: SlotRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistCheckpoint:
    """A stable checkpoint: slots at or below ``seq`` may be deleted."""

    seq: int
    block: Block
    proof: tuple[Signed, ...]
    state: LedgerState
    """The state at ``seq`` (kept to serve state transfer after a restart)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PersistBlock:
    block: Block
    certificate: tuple[Signed, ...]
    state: LedgerState
    """The state after ``block``; write the accounts in ``state.changed_keys`` and the
    market records in each table's ``changed`` (or all of them after a state transfer:
    ``snapshot_installed``)."""
    snapshot_installed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockCommitted:
    block: Block
    certificate: tuple[Signed, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCommitted:
    request_id: int
    tx_hash: bytes
    height: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientRejected:
    request_id: int | None
    tx_hash: bytes | None
    reason_code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Equivocation:
    """Two pre-prepares signed by one primary for one (view, seq) with different blocks."""

    first: Signed
    second: Signed


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceFound:
    evidence: Equivocation


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerMisbehaved:
    peer: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidatorsChanged:
    epoch: int
    validators: tuple[bytes, ...]
    index: int | None
    """Our index in ``validators``; None: not a member (passive)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NeedBlocks:
    from_height: int


# -- recovery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovered:
    """What a restarted replica reads back from its store."""

    view: int
    in_view_change: bool
    ledger: LedgerState | None
    last_certificate: tuple[Signed, ...]
    stable_seq: int
    stable_block: Block | None
    stable_proof: tuple[Signed, ...]
    stable_state: LedgerState | None
    slots: tuple[SlotRecord, ...]
    recent_blocks: tuple[tuple[Block, tuple[Signed, ...]], ...] = ()
    view_epoch: int = 0
    """The epoch ``view`` was persisted in (``PersistView.epoch``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaStatistics:
    epoch: int
    validator_index: int | None
    validators: int
    view: int
    phase: str
    executed_height: int
    stable_seq: int
    mempool_size: int
    view_changes_started: int
    peer_errors: int
    evidence: int
    state_transfers: int
    signatures_verified: int
    signature_cache_hits: int
    messages_other_epoch: int
    messages_from_non_members: int
    blocks_fetched: int
    blocks_rejected: int


Input = Start | MessageReceived | ClientRequest | TimerFired | CertifiedBlocksReceived
Effect = Any
