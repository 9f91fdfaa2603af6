"""The bounded mempool: checked transactions waiting for a block.

Rules:
1. A transaction enters only after every check (size, shape, signature, chain, fee, and
   against the committed state: balance for the next nonce). A nonce ahead of the
   account's next one is admitted when it is within ``per_sender_max`` of it (a client may
   send a few in a row); its balance is checked when it becomes next.
2. Bounded: at most ``total_max`` transactions and ``per_sender_max`` per sender; past
   either bound the newcomer is refused (``mempool_full`` / ``sender_quota``), never an
   older one evicted (first come, first served; no fee auction yet).
3. ``candidates`` orders by (nonce, arrival): deterministic, and each sender's
   transactions come in nonce order, so the proposer's ``build_block`` can include them.
4. After each block ``prune`` drops included transactions and any that the new state
   makes invalid (used nonces, overspends); a nonce gap stays. A block mostly changes its
   own senders' accounts, so the replica prunes just those senders after each block and
   everything at each checkpoint (a change elsewhere, such as the ledger filling up, can
   also invalidate a transaction; until then the proposer skips it).
5. An exact copy of a pending transaction's wire bytes is refused on a hash of the bytes,
   before any decoding: retransmitted forwards are the common case under load.
"""

from __future__ import annotations

import heapq
from hashlib import sha256

from consensus.errors import TxRejected
from consensus.ledger import LedgerState
from consensus.tx import SignedTx, decode_tx, verify_signature


class Mempool:
    __slots__ = ("_arrival", "_by_sender", "_next", "_nonce_heaps", "_txs", "_wire",
                 "per_sender_max", "total_max")

    def __init__(self, total_max: int, per_sender_max: int) -> None:
        self.total_max = total_max
        self.per_sender_max = per_sender_max
        self._txs: dict[bytes, SignedTx] = {}
        # hash -> (arrival seq, now_ms, sha256 of the wire bytes: the key in _wire)
        self._arrival: dict[bytes, tuple[int, int, bytes]] = {}
        self._by_sender: dict[bytes, set[bytes]] = {}  # sender -> pending tx hashes
        # sender -> heap of (nonce, tx hash) over the same transactions: prune looks at
        # the lowest nonces only (removals are always from the top, so no stale entries)
        self._nonce_heaps: dict[bytes, list[tuple[int, bytes]]] = {}
        self._wire: dict[bytes, bytes] = {}  # sha256(wire bytes) -> tx hash
        self._next = 0

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def known(self, data: bytes) -> SignedTx | None:
        """The pending transaction with exactly these wire bytes, decoded and verified on
        admission: a block's copy of it needs neither again. Other bytes (the same body
        with another signature, say) are not known and get every check."""
        tx_hash = self._wire.get(sha256(data).digest())
        return None if tx_hash is None else self._txs[tx_hash]

    def pending_hash(self, data: bytes) -> bytes | None:
        """The tx hash of pending wire bytes, without decoding them; None if not pending."""
        return self._wire.get(sha256(data).digest())

    def admit(self, data: bytes, state: LedgerState, now_ms: int) -> SignedTx:
        wire_key = sha256(data).digest()  # hashed once: the duplicate check and _wire's key
        if wire_key in self._wire:
            raise TxRejected("duplicate", "this transaction is already pending")
        tx = decode_tx(data, state.params.tx_size_max)
        if tx.tx_hash in self._txs:
            raise TxRejected("duplicate", "this transaction is already pending")
        verify_signature(tx)
        try:
            state.check_tx(tx)
        except TxRejected as error:
            nonce = state.account(tx.body.sender).nonce
            if error.reason_code != "nonce_gap" or tx.body.nonce >= nonce + self.per_sender_max:
                raise
        if len(self._txs) >= self.total_max:
            raise TxRejected("mempool_full", f"{self.total_max} transactions are pending; "
                             "retry after the next block")
        sender = tx.body.sender
        pending = self._by_sender.setdefault(sender, set())
        if len(pending) >= self.per_sender_max:
            raise TxRejected("sender_quota", f"this account already has {self.per_sender_max} "
                             "pending transactions; wait for a block")
        self._txs[tx.tx_hash] = tx
        self._arrival[tx.tx_hash] = (self._next, now_ms, wire_key)
        self._next += 1
        pending.add(tx.tx_hash)
        heapq.heappush(self._nonce_heaps.setdefault(sender, []), (tx.body.nonce, tx.tx_hash))
        self._wire[wire_key] = tx.tx_hash
        return tx

    def _remove(self, tx_hash: bytes) -> None:
        tx = self._txs.pop(tx_hash)
        del self._wire[self._arrival.pop(tx_hash)[2]]
        pending = self._by_sender[tx.body.sender]
        pending.discard(tx_hash)
        if not pending:
            del self._by_sender[tx.body.sender]
            del self._nonce_heaps[tx.body.sender]

    def candidates(self, limit: int) -> list[SignedTx]:
        ordered = sorted(self._txs.values(),
                         key=lambda t: (t.body.nonce, self._arrival[t.tx_hash][0]))
        return ordered[:limit]

    def older_than(self, at_ms: int, limit: int) -> list[SignedTx]:
        """Pending since before ``at_ms`` (re-forwarded to the primary), in arrival order."""
        old = [h for h, (_, arrived, _) in self._arrival.items() if arrived <= at_ms]
        return [self._txs[h] for h in old[:limit]]

    def has_executable(self, state: LedgerState) -> bool:
        return any(heap[0][0] == state.account(sender).nonce
                   for sender, heap in self._nonce_heaps.items())

    def prune(self, state: LedgerState, senders: set[bytes] | None = None) -> None:
        """Drop what ``state`` makes invalid: every pending transaction, or only those of
        ``senders`` (the accounts the last block wrote; see rule 4)."""
        heaps = self._nonce_heaps
        for sender in list(heaps) if senders is None else [s for s in senders if s in heaps]:
            heap = heaps[sender]
            nonce = state.account(sender).nonce  # once per sender, not once per transaction
            # A used nonce goes without asking check_tx (its refusal, built and raised
            # for every included transaction, was measurable); the next nonce may have
            # become invalid; a nonce gap stays (what check_tx would say).
            while heap and heap[0][0] < nonce:
                self._remove(heapq.heappop(heap)[1])
            due = []
            while heap and heap[0][0] == nonce:
                due.append(heapq.heappop(heap))
            for entry in due:
                try:
                    state.check_tx(self._txs[entry[1]])
                except TxRejected:
                    self._remove(entry[1])
                else:
                    heapq.heappush(heap, entry)


def decode_verified(data: bytes, state: LedgerState) -> SignedTx:
    """Decode and verify a transaction without the state checks (for tests and tools)."""
    tx = decode_tx(data, state.params.tx_size_max)
    verify_signature(tx)
    return tx
