"""The FTNS ledger state machine: accounts, transactions, blocks, state root and proofs.

The job market (models, workers, jobs, escrow) is the mixin ``LedgerJobs`` in
``consensus/ledger_jobs.py``, with its own rules; its checks are in ``job_checks.py`` and its
queries in ``job_queries.py``.

Rules:
1. Deterministic: integers only, no clock but the block's agreed ``timestamp_ms``, no
   dependence on dict order (everything that iterates sorts first, by public key), no I/O.
2. Immutable states: ``LedgerState.apply_block`` and ``build_block`` return a *new* state
   (dicts copied on write) and never change ``self``, so a replica can execute a proposed
   block tentatively and throw the result away. A rejected transaction changes nothing.
3. Invariants, asserted after every block: the total supply (balances + bonded stake +
   unbonding stake over all accounts, + worker stakes + job escrows and bonds) equals the
   genesis supply; the state root is ``sha256(STATE_DOMAIN || accounts_root ||
   validators_digest || market_root)``: the Merkle root of the sorted accounts, the
   validator set, and the roots of the models, workers and jobs tables
   (``LedgerJobs.market_root``); heights are consecutive and timestamps strictly increase;
   every block's ``prev_hash`` is the previous block's hash.
4. Fees: each transaction pays ``fee >= params.fee_min`` from its sender. At the end of the
   block the fees are split equally among the active validators sorted by key; the
   remainder (``total % n``) goes to validator ``height % n``, so rounding never burns or
   mints a unit and the remainder rotates. A settled job's fee joins them.
5. Unbonding: ``unstake`` moves stake to an unbonding entry that matures at ``height +
   unbonding_period_blocks``; at the start of that block it is credited to the balance
   automatically (no ``withdraw`` transaction: nothing can be forgotten, and the release is
   part of the agreed execution).
6. Validator set: ``register_validator`` flags a staked account; at the end of every block
   whose height is a multiple of ``epoch_length_blocks`` the active set becomes the flagged
   accounts with ``staked >= validator_stake_min``, the ``validators_max`` largest stakes
   (ties by key), sorted by key. An empty result keeps the old set (the chain must not halt).
   When the set changes, ``epoch`` becomes that block's height: the set in a state after
   block h agrees block h+1, and ``epoch`` names that configuration (0 = genesis). Both
   are in the state root (``validators_digest``), so a snapshot proves its epoch too.
7. Block execution order: unbonding releases (by height), then the due job timers at the
   block's ``timestamp_ms`` (which is the state's time from the start: transactions are
   checked against it), then the transactions, then fees and the epoch.
8. Block validity: every transaction in a block must be valid when applied in order; the
   proposer filters its candidates (``build_block``), and a block with an invalid
   transaction or a wrong ``state_root`` is refused as a whole (``BlockInvalid``).

Theory of operation. A block is ``(height, prev_hash, timestamp_ms, txs, state_root)`` with
``state_root`` the root *after* executing it, and ``block_hash = sha256(canonical([height,
prev_hash, timestamp_ms, merkle_root(txs), state_root]))``; a commit certificate signs the
block hash, so it certifies the state root too and any follower can check a balance proof
(``prove_account`` / ``verify_account_proof``) against a certified block.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from consensus import merkle
from consensus.codec import amount_from_bytes, amount_to_bytes, canonical, sha256
from consensus.errors import ConsensusError, TxRejected
from consensus.genesis import Genesis, Params
from consensus.job_checks import JobChecks
from consensus.job_queries import JobQueries
from consensus.job_records import Job, Model, Worker, job_leaf, market_root_of
from consensus.ledger_jobs import JOB_KINDS, LedgerJobs
from consensus.tables import MerkleTable, TimerQueue
from consensus.tx import SignedTx, TxKind, decode_tx, verify_signature

STATE_DOMAIN = b"prsm/state/2"
"""Version 2: the root also covers the job market (``market_root``)."""


class BlockInvalid(ConsensusError):
    """A proposed or received block does not follow from the state (peer or store fault)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    balance: int = 0
    nonce: int = 0
    staked: int = 0
    unbonding: tuple[tuple[int, int], ...] = ()
    """(release_height, amount) pairs in release order."""
    validator: bool = False

    def holdings(self) -> int:
        return self.balance + self.staked + sum(amount for _, amount in self.unbonding)

    def to_plain(self, key: bytes) -> list[Any]:
        return [key, amount_to_bytes(self.balance), self.nonce, amount_to_bytes(self.staked),
                [[h, amount_to_bytes(a)] for h, a in self.unbonding], self.validator]

    @classmethod
    def from_plain(cls, plain: Any) -> tuple[bytes, Account]:
        key, balance, nonce, staked, unbonding, validator = plain
        return bytes(key), cls(balance=amount_from_bytes(balance), nonce=nonce,
                               staked=amount_from_bytes(staked),
                               unbonding=tuple((h, amount_from_bytes(a)) for h, a in unbonding),
                               validator=bool(validator))


NO_ACCOUNT = Account()
"""What ``LedgerState.account`` answers for a key it does not hold (frozen, so shared: a
new default object per lookup was measurable on the transfer path)."""


def account_leaf(key: bytes, account: Account) -> bytes:
    """``canonical(account.to_plain(key))``, packed directly: the plain form holds only
    lists, integers, bytes and a bool (no map to sort, no float), so msgpack's bytes are
    already canonical. Two leaves per transfer on every replica made the sorting pass
    measurable (tests/consensus/test_ledger_properties.py checks the equality)."""
    return msgpack.packb(account.to_plain(key), use_bin_type=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    height: int
    prev_hash: bytes
    timestamp_ms: int
    txs: tuple[bytes, ...]
    state_root: bytes
    block_hash: bytes

    @staticmethod
    def hash_of(height: int, prev_hash: bytes, timestamp_ms: int, txs: tuple[bytes, ...],
                state_root: bytes) -> bytes:
        return sha256(canonical([height, prev_hash, timestamp_ms, merkle.merkle_root(list(txs)),
                                 state_root]))

    @classmethod
    def make(cls, *, height: int, prev_hash: bytes, timestamp_ms: int, txs: tuple[bytes, ...],
             state_root: bytes) -> Block:
        return cls(height=height, prev_hash=prev_hash, timestamp_ms=timestamp_ms, txs=txs,
                   state_root=state_root,
                   block_hash=cls.hash_of(height, prev_hash, timestamp_ms, txs, state_root))

    def to_plain(self) -> list[Any]:
        return [self.height, self.prev_hash, self.timestamp_ms, list(self.txs), self.state_root]

    @classmethod
    def from_plain(cls, plain: Any) -> Block:
        """Rebuild from plain data (the hash is recomputed, never trusted)."""
        height, prev_hash, timestamp_ms, txs, state_root = plain
        if not (type(height) is int and type(timestamp_ms) is int and type(prev_hash) is bytes
                and type(state_root) is bytes and all(type(t) is bytes for t in txs)):
            raise ValueError("block fields have wrong types")
        return cls.make(height=height, prev_hash=prev_hash, timestamp_ms=timestamp_ms,
                        txs=tuple(txs), state_root=state_root)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountProof:
    """Membership of one account in a state root (checkable by any follower)."""

    key: bytes
    account: Account
    accounts_root: bytes
    validators_digest: bytes
    market_root: bytes
    path: tuple[tuple[bytes, bool], ...]


def state_root_of(accounts_root: bytes, validators_digest: bytes, market_root: bytes) -> bytes:
    return sha256(STATE_DOMAIN + accounts_root + validators_digest + market_root)


def verify_account_proof(state_root: bytes, proof: AccountProof) -> bool:
    if state_root_of(proof.accounts_root, proof.validators_digest,
                     proof.market_root) != state_root:
        return False
    return merkle.verify(proof.accounts_root, account_leaf(proof.key, proof.account), proof.path)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobProof:
    """Membership of one job record in a state root: a submitter or a worker can check a
    job's status, result and payout against a certified block, as a balance."""

    job_id: bytes
    job: Job
    accounts_root: bytes
    validators_digest: bytes
    models_root: bytes
    workers_root: bytes
    jobs_root: bytes
    path: tuple[tuple[bytes, bool], ...]


def verify_job_proof(state_root: bytes, proof: JobProof) -> bool:
    market_root = market_root_of(proof.models_root, proof.workers_root, proof.jobs_root)
    if state_root_of(proof.accounts_root, proof.validators_digest, market_root) != state_root:
        return False
    return merkle.verify(proof.jobs_root, job_leaf(proof.job_id, proof.job), proof.path)


GENESIS_PREV_HASH = b"\x00" * 32


class LedgerState(LedgerJobs, JobChecks, JobQueries):
    """One immutable ledger state (after ``height`` blocks); see the module rules."""

    __slots__ = (
        "_delta",
        "_expiries",
        "_keys_owned",
        "_leaves",
        "_model_workers",
        "_queue",
        "_timers",
        "accounts",
        "changed_keys",
        "epoch",
        "genesis",
        "height",
        "jobs",
        "keys",
        "last_block_hash",
        "last_timestamp_ms",
        "models",
        "params",
        "state_root",
        "total_supply",
        "validators",
        "workers",
    )
    models: MerkleTable[str, Model]
    workers: MerkleTable[bytes, Worker]
    jobs: MerkleTable[bytes, Job]
    _model_workers: dict[str, tuple[bytes, ...]]
    """Model CID -> sorted keys of the workers that list it (derived; replaced on write)."""
    _timers: TimerQueue
    """(timer_ms, job id) of open jobs; ``_expiries`` the same for finished ones."""
    _expiries: TimerQueue

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.params: Params = genesis.params
        self.height = 0
        self.last_block_hash = genesis.genesis_hash()
        self.last_timestamp_ms = genesis.genesis_time_ms
        self.accounts: dict[bytes, Account] = {}
        for key, balance in genesis.allocations:
            self.accounts[key] = Account(balance=balance)
        for key, stake in genesis.validators:
            previous = self.accounts.get(key, Account())
            self.accounts[key] = Account(balance=previous.balance, staked=stake, validator=True)
        self.validators: tuple[bytes, ...] = genesis.validator_keys()
        self.epoch = 0
        """The height after which ``validators`` took over (rule 6; 0 = genesis)."""
        self.total_supply = genesis.total_supply
        self._delta = 0
        self._keys_owned = True
        self.changed_keys: set[bytes] = set(self.accounts)
        """Accounts written by the block that produced this state (what a store writes)."""
        self._init_market()
        self._rebuild_indexes()

    def _rebuild_indexes(self) -> None:
        self.keys = sorted(self.accounts)
        self._leaves = {k: merkle.leaf_hash(account_leaf(k, a)) for k, a in self.accounts.items()}
        self._queue: dict[int, tuple[bytes, ...]] = {}
        for key in self.keys:
            for release, _ in self.accounts[key].unbonding:
                if key not in self._queue.get(release, ()):
                    self._queue[release] = (*self._queue.get(release, ()), key)
        self.state_root = self._compute_root()

    # -- reading ---------------------------------------------------------------------------

    def account(self, key: bytes) -> Account:
        return self.accounts.get(key, NO_ACCOUNT)

    def _validators_digest(self) -> bytes:
        return sha256(canonical([self.epoch, list(self.validators)]))

    def _compute_root(self) -> bytes:
        accounts_root = merkle.root_of_hashes([self._leaves[k] for k in self.keys])
        return state_root_of(accounts_root, self._validators_digest(), self.market_root())

    def prove_account(self, key: bytes) -> AccountProof | None:
        index = bisect.bisect_left(self.keys, key)
        if index == len(self.keys) or self.keys[index] != key:
            return None
        hashes = [self._leaves[k] for k in self.keys]
        return AccountProof(key=key, account=self.accounts[key],
                            accounts_root=merkle.root_of_hashes(hashes),
                            validators_digest=self._validators_digest(),
                            market_root=self.market_root(), path=merkle.prove(hashes, index))

    def prove_job(self, job_id: bytes) -> JobProof | None:
        path = self.jobs.prove(job_id)
        job = self.jobs.get(job_id)
        if path is None or job is None:
            return None
        return JobProof(job_id=job_id, job=job, accounts_root=merkle.root_of_hashes(
            [self._leaves[k] for k in self.keys]), validators_digest=self._validators_digest(),
            models_root=self.models.root(), workers_root=self.workers.root(),
            jobs_root=self.jobs.root(), path=path)

    def supply_now(self) -> int:
        return sum(self.accounts[k].holdings() for k in self.keys) + self.market_holdings()

    # -- transactions ----------------------------------------------------------------------

    def check_tx(self, tx: SignedTx) -> None:
        """Stateful checks against this state; raises ``TxRejected``. Changes nothing."""
        body, params = tx.body, self.params
        if body.chain_id != self.genesis.chain_id:
            raise TxRejected("wrong_chain", f"signed for chain {body.chain_id!r}, this chain "
                             f"is {self.genesis.chain_id!r}")
        account = self.account(body.sender)
        if body.nonce < account.nonce:
            raise TxRejected("bad_nonce", f"nonce {body.nonce} was already used; the next "
                             f"nonce of this account is {account.nonce}")
        if body.nonce > account.nonce:
            raise TxRejected("nonce_gap", f"nonce {body.nonce} is ahead; the next nonce of "
                             f"this account is {account.nonce}")
        if body.fee < params.fee_min:
            raise TxRejected("fee_too_low", f"fee {body.fee} is below the minimum "
                             f"{params.fee_min} base units")
        kind = body.kind
        if kind in JOB_KINDS:
            self._check_job_tx(tx, account)
            return
        spend = body.fee + (body.amount if kind in (TxKind.TRANSFER, TxKind.STAKE) else 0)
        if account.balance < spend:
            raise TxRejected("insufficient_balance", f"needs {spend} base units (amount + "
                             f"fee), the balance is {account.balance}")
        if kind in (TxKind.STAKE, TxKind.UNSTAKE) and body.amount == 0:
            raise TxRejected("bad_amount", "stake and unstake need an amount > 0")
        if kind is TxKind.UNSTAKE:
            if account.staked < body.amount:
                raise TxRejected("insufficient_stake", f"unstaking {body.amount} but only "
                                 f"{account.staked} is bonded")
            if len(account.unbonding) >= params.unbonding_entries_max:
                raise TxRejected("unbonding_full", f"{params.unbonding_entries_max} unbondings "
                                 "are already pending; wait for one to mature")
        elif kind is TxKind.REGISTER_VALIDATOR:
            if account.validator:
                raise TxRejected("already_validator", "this account is already registered")
            if account.staked < params.validator_stake_min:
                raise TxRejected("insufficient_stake", f"a validator needs "
                                 f"{params.validator_stake_min} bonded, this account has "
                                 f"{account.staked}")
        elif (kind is TxKind.TRANSFER and body.to not in self.accounts
              and len(self.accounts) >= params.accounts_max):
            raise TxRejected("ledger_full", "the ledger holds params.accounts_max accounts; "
                             "send to an existing account")

    def decode_and_check(self, data: bytes) -> SignedTx:
        """All checks for wire bytes: size, shape, signature, then state."""
        tx = decode_tx(data, self.params.tx_size_max)
        verify_signature(tx)
        self.check_tx(tx)
        return tx

    # -- blocks ----------------------------------------------------------------------------

    def _successor(self) -> LedgerState:
        new = object.__new__(LedgerState)
        for name in LedgerState.__slots__:
            setattr(new, name, getattr(self, name))
        new.accounts = dict(self.accounts)
        new._leaves = dict(self._leaves)
        new._queue = dict(self._queue)
        new.height = self.height + 1
        new._delta = 0
        new._keys_owned = False
        new.changed_keys = set()
        self._market_successor(new)
        return new

    def _put(self, key: bytes, account: Account) -> None:
        previous = self.accounts.get(key)
        if previous is None:
            if not self._keys_owned:
                self.keys = list(self.keys)
                self._keys_owned = True
            bisect.insort(self.keys, key)
        else:
            self._delta -= previous.holdings()
        self._delta += account.holdings()
        self.changed_keys.add(key)
        self.accounts[key] = account
        self._leaves[key] = merkle.leaf_hash(account_leaf(key, account))

    def _apply_tx(self, tx: SignedTx) -> int:
        """Apply one checked transaction to this (successor) state; returns its fee."""
        body = tx.body
        sender = self.account(body.sender)
        balance, staked = sender.balance - body.fee, sender.staked
        unbonding, validator = sender.unbonding, sender.validator
        kind = body.kind
        if kind in JOB_KINDS:
            self._put(body.sender, Account(balance=balance, nonce=sender.nonce + 1,
                                           staked=staked, unbonding=unbonding,
                                           validator=validator))
            return body.fee + self._apply_job_tx(tx)
        if kind is TxKind.TRANSFER:
            balance -= body.amount
        elif kind is TxKind.STAKE:
            balance -= body.amount
            staked += body.amount
        elif kind is TxKind.UNSTAKE:
            staked -= body.amount
            unbonding = self._schedule_release(body.sender, unbonding, body.amount)
        else:
            validator = True
        assert balance >= 0 and staked >= 0
        self._put(body.sender, Account(balance=balance, nonce=sender.nonce + 1, staked=staked,
                                       unbonding=unbonding, validator=validator))
        if kind is TxKind.TRANSFER:
            self._add_balance(body.to, body.amount)
        return body.fee

    def _add_balance(self, key: bytes, amount: int) -> None:
        """Credit (or, negative, debit) ``key``'s balance; the caller moves the other side."""
        account = self.account(key)
        assert account.balance + amount >= 0
        self._put(key, Account(balance=account.balance + amount, nonce=account.nonce,
                               staked=account.staked, unbonding=account.unbonding,
                               validator=account.validator))

    def _schedule_release(self, key: bytes, unbonding: tuple[tuple[int, int], ...],
                          amount: int) -> tuple[tuple[int, int], ...]:
        """``unbonding`` plus ``amount`` released after the unbonding period (rule 5)."""
        release = self.height + self.params.unbonding_period_blocks
        if key not in self._queue.get(release, ()):
            self._queue[release] = (*self._queue.get(release, ()), key)
        return (*unbonding, (release, amount))

    def _unbond(self, key: bytes, amount: int) -> None:
        """Start unbonding ``amount`` that leaves a stake held elsewhere (a worker's)."""
        account = self.account(key)
        self._put(key, Account(balance=account.balance, nonce=account.nonce,
                               staked=account.staked, validator=account.validator,
                               unbonding=self._schedule_release(key, account.unbonding,
                                                                amount)))

    def _release_unbonding(self) -> None:
        for key in sorted(self._queue.pop(self.height, ())):
            account = self.accounts[key]
            matured = sum(a for h, a in account.unbonding if h <= self.height)
            self._put(key, Account(balance=account.balance + matured, nonce=account.nonce,
                                   staked=account.staked, validator=account.validator,
                                   unbonding=tuple((h, a) for h, a in account.unbonding
                                                   if h > self.height)))

    def _finish_block(self, fees: int) -> None:
        validators = self.validators
        if fees:
            share, remainder = divmod(fees, len(validators))
            lucky = validators[self.height % len(validators)]
            for key in validators:
                self._add_balance(key, share + (remainder if key == lucky else 0))
        if self.height % self.params.epoch_length_blocks == 0:
            self._next_validator_set()

    def _next_validator_set(self) -> None:
        params = self.params
        eligible = [(-self.accounts[k].staked, k) for k in self.keys
                    if self.accounts[k].validator
                    and self.accounts[k].staked >= params.validator_stake_min]
        eligible.sort()
        chosen = tuple(sorted(k for _, k in eligible[:params.validators_max]))
        if chosen and chosen != self.validators:
            self.validators = chosen
            self.epoch = self.height

    def _execute(self, timestamp_ms: int, txs: Iterable[SignedTx], batch_max: int,
                 strict: bool) -> tuple[LedgerState, list[SignedTx]]:
        if timestamp_ms <= self.last_timestamp_ms:
            raise BlockInvalid(f"timestamp {timestamp_ms} is not after "
                               f"{self.last_timestamp_ms}")
        new = self._successor()
        new.last_timestamp_ms = timestamp_ms
        new._release_unbonding()
        fees, included = new._run_job_timers(), []
        for tx in txs:
            if len(included) == batch_max:
                break
            try:
                new.check_tx(tx)
            except TxRejected as error:
                if strict:
                    raise BlockInvalid(f"transaction {tx.tx_hash.hex()[:16]}: {error}") from error
                continue
            fees += new._apply_tx(tx)
            included.append(tx)
        new._finish_block(fees)
        new.state_root = new._compute_root()
        return new, included

    def build_block(self, timestamp_ms: int, candidates: Iterable[SignedTx]
                    ) -> tuple[Block, LedgerState]:
        """Proposer: include valid candidates in order (up to ``batch_size_max``)."""
        new, included = self._execute(timestamp_ms, candidates, self.params.batch_size_max,
                                      strict=False)
        block = Block.make(height=new.height, prev_hash=self.last_block_hash,
                           timestamp_ms=timestamp_ms, txs=tuple(t.encoded for t in included),
                           state_root=new.state_root)
        new.last_block_hash = block.block_hash
        self._assert_successor(new)
        return block, new

    def apply_block(self, block: Block,
                    known: Callable[[bytes], SignedTx | None] | None = None) -> LedgerState:
        """Validate ``block`` against this state and return the state after it.

        ``known`` returns the already decoded and verified transaction for wire bytes (the
        mempool's ``known``), or None; only exact wire bytes are reused, anything else is
        decoded and its signature checked."""
        if block.height != self.height + 1 or block.prev_hash != self.last_block_hash:
            raise BlockInvalid(f"block {block.height} does not extend height {self.height}")
        if len(block.txs) > self.params.batch_size_max:
            raise BlockInvalid(f"block has {len(block.txs)} transactions")
        txs = []
        try:
            for data in block.txs:
                tx = known(data) if known is not None else None
                if tx is None:
                    tx = decode_tx(data, self.params.tx_size_max)
                    verify_signature(tx)
                txs.append(tx)
        except TxRejected as error:
            raise BlockInvalid(f"block {block.height}: {error}") from error
        new, _ = self._execute(block.timestamp_ms, txs, len(txs), strict=True)
        if new.state_root != block.state_root:
            raise BlockInvalid(f"block {block.height}: state root differs")
        new.last_block_hash = block.block_hash
        self._assert_successor(new)
        return new

    def _assert_successor(self, new: LedgerState) -> None:
        assert new.height == self.height + 1
        assert new.total_supply == self.total_supply
        assert new._delta == 0, f"block {new.height} changed the total supply by {new._delta}"
        assert len(new.keys) == len(new.accounts)

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain (msgpack-able) state, for the store and for state transfer."""
        return {"height": self.height, "last_block_hash": self.last_block_hash,
                "last_timestamp_ms": self.last_timestamp_ms,
                "validators": list(self.validators), "epoch": self.epoch,
                "state_root": self.state_root,
                "accounts": [self.accounts[k].to_plain(k) for k in self.keys],
                **self.market_snapshot()}

    @classmethod
    def from_snapshot(cls, genesis: Genesis, plain: dict[str, Any]) -> LedgerState:
        """Rebuild a state; refuses one whose root or supply does not check out."""
        state = cls(genesis)
        try:
            state.height = plain["height"]
            state.last_block_hash = bytes(plain["last_block_hash"])
            state.last_timestamp_ms = plain["last_timestamp_ms"]
            state.validators = tuple(bytes(k) for k in plain["validators"])
            state.epoch = plain["epoch"]
            if type(state.epoch) is not int or not 0 <= state.epoch <= state.height:
                raise ValueError("epoch must be an int in 0..height")
            state.accounts = dict(Account.from_plain(a) for a in plain["accounts"])
            state.market_from_snapshot(plain)
        except (KeyError, TypeError, ValueError) as error:
            raise BlockInvalid(f"snapshot is malformed ({error})") from error
        state._rebuild_indexes()
        if state.state_root != plain["state_root"] or state.supply_now() != state.total_supply:
            raise BlockInvalid("snapshot does not match its state root or the genesis supply")
        return state


def supply_check(state: LedgerState) -> None:
    """Full (O(accounts + workers + jobs)) supply audit; the per-block assertion checks the
    running total."""
    assert state.supply_now() == state.total_supply, "total supply changed"
