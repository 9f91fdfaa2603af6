"""Ledger state machine: checks with reason codes, fees, unbonding, epochs, roots, proofs."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.codec import canonical
from consensus.errors import GenesisError, TxRejected
from consensus.genesis import UNITS_PER_FTNS, Genesis
from consensus.ledger import Block, BlockInvalid, LedgerState, supply_check, verify_account_proof
from consensus.tx import TxKind, decode_tx, verify_signature
from tests.consensus.helpers import CHAIN, FEE, make_genesis, signers, transfer, tx

U = UNITS_PER_FTNS
PEOPLE = signers(3, offset=10)
VALIDATORS = signers(4)


@pytest.fixture
def state() -> LedgerState:
    return LedgerState(make_genesis(PEOPLE, VALIDATORS))


def reject_code(state: LedgerState, data: bytes) -> str:
    with pytest.raises(TxRejected) as info:
        state.decode_and_check(data)
    assert info.value.message  # a clear message, not just a code
    return info.value.reason_code


def test_transfer_moves_balance_and_pays_fee_to_validators(state: LedgerState) -> None:
    alice, bob = PEOPLE[0], PEOPLE[1]
    block, after = state.build_block(10, [transfer(alice, 0, bob.public_key, 7 * U)])
    assert len(block.txs) == 1
    assert after.account(alice.public_key).balance == 100 * U - 7 * U - FEE
    assert after.account(alice.public_key).nonce == 1
    assert after.account(bob.public_key).balance == 107 * U
    gained = [after.account(v.public_key).balance - state.account(v.public_key).balance
              for v in VALIDATORS]
    assert sum(gained) == FEE and max(gained) - min(gained) <= FEE % 4
    supply_check(after)


def test_fee_remainder_goes_to_rotating_validator() -> None:
    genesis = make_genesis(PEOPLE, VALIDATORS, fee_min=7)
    state = LedgerState(genesis)
    _, after = state.build_block(5, [tx(PEOPLE[0], TxKind.TRANSFER, 0, 1,
                                            PEOPLE[1].public_key, fee=7)])
    keys = genesis.validator_keys()
    gained = {k: after.account(k).balance - state.account(k).balance for k in keys}
    assert gained[keys[1 % 4]] == 1 + 3  # height 1: validator 1 gets the remainder 7 % 4
    assert sum(gained.values()) == 7


@pytest.mark.parametrize(("make", "code"), [
    (lambda: tx(PEOPLE[0], TxKind.TRANSFER, 0, 1, PEOPLE[1].public_key, chain="other"),
     "wrong_chain"),
    (lambda: tx(PEOPLE[0], TxKind.TRANSFER, 1, 1, PEOPLE[1].public_key), "nonce_gap"),
    (lambda: tx(PEOPLE[0], TxKind.TRANSFER, 0, 1, PEOPLE[1].public_key, fee=1), "fee_too_low"),
    (lambda: tx(PEOPLE[0], TxKind.TRANSFER, 0, 100 * U, PEOPLE[1].public_key),
     "insufficient_balance"),
    (lambda: tx(PEOPLE[0], TxKind.UNSTAKE, 0, 1), "insufficient_stake"),
    (lambda: tx(PEOPLE[0], TxKind.STAKE, 0, 0), "bad_amount"),
    (lambda: tx(PEOPLE[0], TxKind.REGISTER_VALIDATOR, 0), "insufficient_stake"),
    (lambda: tx(VALIDATORS[0], TxKind.REGISTER_VALIDATOR, 0), "already_validator"),
])
def test_bad_transactions_are_rejected_with_reason(state: LedgerState, make, code: str) -> None:
    assert reject_code(state, make().encoded) == code


def test_bad_signature_oversize_malformed_and_replay(state: LedgerState) -> None:
    good = transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)
    forged = bytearray(good.encoded)
    forged[-5] ^= 1  # inside the signature
    assert reject_code(state, bytes(forged)) == "bad_signature"
    assert reject_code(state, b"\x00" * 2000) == "oversize"
    assert reject_code(state, b"\xc1garbage") == "malformed"
    assert reject_code(state, canonical({"body": 1, "signer": 2, "sig": 3})) == "malformed"
    _, after = state.build_block(1, [good])
    assert reject_code(after, good.encoded) == "bad_nonce"  # replayed


def test_signature_from_other_key_is_rejected() -> None:
    good = transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)
    other = transfer(PEOPLE[1], 0, PEOPLE[1].public_key, U)
    spliced = dataclasses.replace(good, signature=other.signature)
    with pytest.raises(TxRejected, match="bad_signature"):
        verify_signature(spliced)


def test_invalid_candidates_are_skipped_by_proposer_and_change_nothing(state) -> None:
    bad = transfer(PEOPLE[0], 5, PEOPLE[1].public_key, U)
    block, after = state.build_block(1, [bad])
    assert block.txs == ()
    for key in state.keys:
        if key not in state.validators:
            assert after.account(key) == state.account(key)


def test_block_with_invalid_tx_or_wrong_root_is_refused(state: LedgerState) -> None:
    good = transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)
    block, _ = state.build_block(1, [good])
    wrong_root = Block.make(height=1, prev_hash=block.prev_hash, timestamp_ms=1, txs=block.txs,
                            state_root=b"\x11" * 32)
    with pytest.raises(BlockInvalid, match="state root"):
        state.apply_block(wrong_root)
    replay = Block.make(height=1, prev_hash=block.prev_hash, timestamp_ms=1,
                        txs=(good.encoded, good.encoded), state_root=block.state_root)
    with pytest.raises(BlockInvalid, match="bad_nonce"):
        state.apply_block(replay)
    with pytest.raises(BlockInvalid, match="timestamp"):
        state.apply_block(Block.make(height=1, prev_hash=block.prev_hash, timestamp_ms=0,
                                     txs=(), state_root=block.state_root))
    assert state.apply_block(block).state_root == block.state_root


def test_unstake_releases_automatically_after_unbonding_period(state: LedgerState) -> None:
    validator = VALIDATORS[0]
    _, after = state.build_block(1, [tx(validator, TxKind.UNSTAKE, 0, 4 * U)])
    account = after.account(validator.public_key)
    assert account.staked == 6 * U and account.unbonding == ((1 + 3, 4 * U),)
    balance = account.balance
    for height in range(2, 5):
        _, after = after.build_block(height, [])
    account = after.account(validator.public_key)
    assert account.unbonding == () and account.balance == balance + 4 * U
    supply_check(after)


def test_validator_set_changes_only_at_epoch_boundary(state: LedgerState) -> None:
    newcomer = PEOPLE[2]
    _, after = state.build_block(1, [tx(newcomer, TxKind.STAKE, 0, 20 * U),
                                     tx(newcomer, TxKind.REGISTER_VALIDATOR, 1)])
    assert after.account(newcomer.public_key).validator
    assert newcomer.public_key not in after.validators
    for height in (2, 3):
        _, after = after.build_block(height, [])
        assert newcomer.public_key not in after.validators
    _, after = after.build_block(4, [])  # epoch_length_blocks = 4
    assert newcomer.public_key in after.validators and len(after.validators) == 5
    assert list(after.validators) == sorted(after.validators)


def test_balance_proof_checks_against_block_root_and_fails_when_altered(state) -> None:
    block, after = state.build_block(1, [transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)])
    proof = after.prove_account(PEOPLE[1].public_key)
    assert proof is not None and proof.account.balance == 101 * U
    assert verify_account_proof(block.state_root, proof)
    lie = dataclasses.replace(proof, account=dataclasses.replace(proof.account,
                                                                 balance=1000 * U))
    assert not verify_account_proof(block.state_root, lie)
    assert not verify_account_proof(state.state_root, proof)
    assert after.prove_account(b"\x99" * 32) is None


def test_snapshot_round_trip_and_tampered_snapshot_refused(state: LedgerState) -> None:
    _, after = state.build_block(1, [transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)])
    plain = after.snapshot()
    again = LedgerState.from_snapshot(after.genesis, plain)
    assert again.state_root == after.state_root and again.height == 1
    plain["accounts"][0][1] = (10**30).to_bytes(16, "big")
    with pytest.raises(BlockInvalid):
        LedgerState.from_snapshot(after.genesis, plain)


def test_genesis_json_round_trip_and_errors_name_the_field() -> None:
    genesis = make_genesis(PEOPLE, VALIDATORS)
    assert Genesis.from_json(genesis.to_json()) == genesis
    assert genesis.genesis_hash() == Genesis.from_json(genesis.to_json()).genesis_hash()
    plain = genesis.to_plain()
    plain["validators"][0]["stake"] = "1"
    with pytest.raises(GenesisError, match="validator_stake_min"):
        Genesis.from_plain(plain)
    plain = genesis.to_plain()
    plain["params"]["batch_size_max"] = 0
    with pytest.raises(GenesisError, match="batch_size_max"):
        Genesis.from_plain(plain)
    with pytest.raises(GenesisError, match="32-byte"):
        Genesis.from_plain({**genesis.to_plain(), "allocations": [{"account": "ab",
                                                                   "balance": 1}]})


def test_decode_round_trip_and_non_canonical_refused() -> None:
    good = transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)
    assert decode_tx(good.encoded, 1024) == good
    import msgpack
    plain = msgpack.unpackb(good.encoded, raw=False)
    reordered = msgpack.packb({"sig": plain["sig"], "signer": plain["signer"],
                               "body": plain["body"]}, use_bin_type=True)
    with pytest.raises(TxRejected, match="canonical"):
        decode_tx(reordered, 1024)
    assert good.body.chain_id == CHAIN


def test_canonical_encoding_sorts_keys_and_refuses_floats() -> None:
    assert canonical({"b": 1, "a": [2, (3,)]}) == canonical({"a": [2, [3]], "b": 1})
    with pytest.raises(TypeError, match="floats"):
        canonical({"a": 1.5})
    with pytest.raises(TypeError, match="keys"):
        canonical({"a": 1, b"b": 2})


def test_known_body_with_forged_signature_is_refused_in_a_block(state: LedgerState) -> None:
    good = transfer(PEOPLE[0], 0, PEOPLE[1].public_key, U)
    forged = dataclasses.replace(good, signature=bytes(64))
    forged_bytes = canonical({"body": good.body.to_plain(), "signer": good.body.sender,
                              "sig": bytes(64)})
    assert decode_tx(forged_bytes, 1024).tx_hash == good.tx_hash == forged.tx_hash
    block, _ = state.build_block(1, [good])
    bad = Block.make(height=1, prev_hash=block.prev_hash, timestamp_ms=1, txs=(forged_bytes,),
                     state_root=block.state_root)
    with pytest.raises(BlockInvalid, match="bad_signature"):
        state.apply_block(bad, known={good.encoded: good}.get)
    assert state.apply_block(block, known={good.encoded: good}.get)
