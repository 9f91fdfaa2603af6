"""consensus: the FTNS ledger and its PBFT replication, as pure cores (DESIGN.md).

No trio, libp2p or prsm_node imports; no clock, randomness or socket anywhere here, and
only ``store.py`` touches the disk (sqlite3). Modules:

- ``codec``: canonical msgpack, amounts as 16 bytes, domain-separated Ed25519 signatures.
- ``genesis``: chain id, allocations, validators, ``Params``; JSON in and out.
- ``tx``: transactions (``prsm/tx/1``), decoding and stateless checks (``TxRejected``).
- ``merkle``: RFC 6962-style tree and membership proofs.
- ``ledger``: ``LedgerState`` (immutable), ``Block``, account proofs, supply invariant.
- ``mempool``: the bounded, checked pool of pending transactions.
- ``messages``: PBFT messages (``prsm/pbft/2``, epoch-bound) and their wire codec.
- ``certificates``: quorums, the signature cache, ``verify_commit_certificate``.
- ``view_change``: pure view-change / new-view selection.
- ``replica_effects``: the replica's config, inputs, effects and the shell's contract.
- ``replica`` (+ ``replica_view``, ``replica_clients``, ``replica_epochs``): the sans-IO
  PBFT replica; ``replica_epochs`` changes the validator set at epoch boundaries.
- ``store``: SQLite (WAL) persistence of blocks, ledger and replica safety state.
"""
