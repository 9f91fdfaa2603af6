"""Hypothesis properties of the ledger: supply conserved, replay determinism, rejects inert."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.codec import canonical
from consensus.errors import TxRejected
from consensus.genesis import UNITS_PER_FTNS
from consensus.ledger import Account, LedgerState, account_leaf, supply_check
from consensus.tx import SignedTx, TxKind
from tests.consensus.helpers import make_genesis, signers, tx

U = UNITS_PER_FTNS
PEOPLE = signers(4, offset=20)
VALIDATORS = signers(4)
EVERYONE = PEOPLE + VALIDATORS
GENESIS = make_genesis(PEOPLE, VALIDATORS)
ACCOUNT_KINDS = [TxKind.TRANSFER, TxKind.STAKE, TxKind.UNSTAKE, TxKind.REGISTER_VALIDATOR]

operation = st.tuples(
    st.integers(0, len(EVERYONE) - 1),  # sender
    st.sampled_from(ACCOUNT_KINDS),  # the job kinds: test_job_properties.py
    st.integers(0, 3),  # nonce offset from the right one (0 = right)
    st.integers(0, 150) .map(lambda n: n * U // 10),  # amount, sometimes too large
    st.integers(0, len(EVERYONE) - 1),  # recipient
    st.booleans(),  # fee too low
)
blocks = st.lists(st.lists(operation, max_size=6), min_size=1, max_size=8)


def make_tx(state: LedgerState, nonces: dict[bytes, int], op) -> SignedTx:
    sender_index, kind, nonce_offset, amount, to_index, cheap = op
    sender = EVERYONE[sender_index]
    nonce = nonces.get(sender.public_key, state.account(sender.public_key).nonce)
    to = EVERYONE[to_index].public_key if kind is TxKind.TRANSFER else b""
    return tx(sender, kind, nonce + (nonce_offset if nonce_offset == 3 else 0), amount, to,
              fee=1 if cheap else 10**15)


def run_chain(plan) -> tuple[LedgerState, list]:
    state = LedgerState(GENESIS)
    chain = []
    for height, ops in enumerate(plan, start=1):
        nonces: dict[bytes, int] = {}
        candidates = []
        for op in ops:
            candidate = make_tx(state, nonces, op)
            nonces[candidate.body.sender] = candidate.body.nonce + 1
            candidates.append(candidate)
        block, state = state.build_block(height * 1000, candidates)
        chain.append(block)
    return state, chain


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_total_supply_is_conserved(plan) -> None:
    state, _ = run_chain(plan)
    supply_check(state)
    assert state.supply_now() == GENESIS.total_supply


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks)
def test_replaying_the_same_blocks_gives_the_same_roots(plan) -> None:
    built, chain = run_chain(plan)
    replayed = LedgerState(GENESIS)
    for block in chain:
        replayed = replayed.apply_block(block)
        assert replayed.state_root == block.state_root
        assert replayed.last_block_hash == block.block_hash
    assert replayed.snapshot() == built.snapshot()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks, operation)
def test_invalid_transactions_never_change_state(plan, op) -> None:
    state, _ = run_chain(plan)
    candidate = make_tx(state, {}, op)
    before = state.snapshot()
    try:
        state.check_tx(candidate)
    except TxRejected:
        block, after = state.build_block(10**9, [candidate])
        empty_block, empty = state.build_block(10**9, [])
        assert block.txs == ()
        assert after.snapshot() == empty.snapshot()  # as if it had never been sent
        assert block.block_hash == empty_block.block_hash
    assert state.snapshot() == before  # states are immutable either way


amounts = st.integers(0, 2**128 - 1)


@given(key=st.binary(min_size=32, max_size=32), balance=amounts,
       nonce=st.integers(0, 2**64 - 1), staked=amounts,
       unbonding=st.lists(st.tuples(st.integers(0, 2**64 - 1), amounts), max_size=4),
       validator=st.booleans())
@settings(max_examples=200, deadline=None)
def test_an_account_leaf_is_the_canonical_encoding_of_the_account(
        key: bytes, balance: int, nonce: int, staked: int,
        unbonding: list[tuple[int, int]], validator: bool) -> None:
    account = Account(balance=balance, nonce=nonce, staked=staked,
                      unbonding=tuple(unbonding), validator=validator)
    assert account_leaf(key, account) == canonical(account.to_plain(key))
