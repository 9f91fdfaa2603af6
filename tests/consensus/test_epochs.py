"""Validator-set changes at epoch boundaries: the ledger's epoch, epoch-bound messages and
certificates, and the replica's pure reconfiguration (consensus/replica_epochs.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.certificates import (
    CertificateError,
    SignatureCache,
    quorum_size,
    verify_commit_certificate,
)
from consensus.codec import Ed25519Signer
from consensus.errors import PeerProtocolError
from consensus.genesis import UNITS_PER_FTNS
from consensus.ledger import BlockInvalid, LedgerState
from consensus.messages import (
    CertifiedBlock,
    Commit,
    Prepare,
    PrePrepare,
    decode_frame,
    encode_frame,
    sign_message,
)
from consensus.replica import Replica
from consensus.replica_effects import (
    Broadcast,
    CertifiedBlocksReceived,
    ClientRejected,
    ClientRequest,
    MessageReceived,
    NeedBlocks,
    PeerMisbehaved,
    PersistBlock,
    PersistCheckpoint,
    PersistView,
    Recovered,
    Send,
    Start,
    TimerFired,
    TimerId,
    TimerKind,
    ValidatorsChanged,
)
from consensus.store import LedgerStore
from consensus.tx import SignedTx, TxKind
from tests.consensus.helpers import make_genesis, signers, transfer, tx

U = UNITS_PER_FTNS
VALIDATORS = sorted(signers(4), key=lambda s: s.public_key)  # index i = VALIDATORS[i]
NEWCOMERS = signers(2, offset=40)
USERS = signers(2, offset=60)
EVERYONE = VALIDATORS + NEWCOMERS + USERS
GENESIS = make_genesis(NEWCOMERS + USERS, VALIDATORS)  # epoch_length_blocks=4
BY_KEY = {s.public_key: s for s in EVERYONE}


class Chain:
    """A certified chain built by hand: each block committed by the configuration of the
    state before it (what honest replicas would have signed)."""

    def __init__(self) -> None:
        self.state = LedgerState(GENESIS)
        self.blocks: list[CertifiedBlock] = []
        self.nonces: dict[bytes, int] = {}

    def tx(self, signer: Ed25519Signer, kind: TxKind, amount: int = 0,
           to: bytes = b"") -> SignedTx:
        nonce = self.nonces.get(signer.public_key, 0)
        self.nonces[signer.public_key] = nonce + 1
        return tx(signer, kind, nonce, amount, to)

    def add(self, txs: list[SignedTx]) -> CertifiedBlock:
        before = self.state
        block, self.state = before.build_block(before.last_timestamp_ms + 10, txs)
        quorum = quorum_size(len(before.validators))
        certificate = tuple(
            sign_message(Commit(view=0, seq=block.height, digest=block.block_hash), index,
                         BY_KEY[key], before.epoch)
            for index, key in enumerate(before.validators))[:quorum]
        certified = CertifiedBlock(block=block, certificate=certificate)
        self.blocks.append(certified)
        return certified

    def filler(self, count: int) -> None:
        for _ in range(count):
            self.add([self.tx(USERS[0], TxKind.TRANSFER, 1, USERS[1].public_key)])


def joined_chain() -> Chain:
    """Newcomer 0 stakes and registers in block 1; the set changes at block 4."""
    chain = Chain()
    chain.add([chain.tx(NEWCOMERS[0], TxKind.STAKE, 10 * U),
               chain.tx(NEWCOMERS[0], TxKind.REGISTER_VALIDATOR)])
    chain.filler(3)
    return chain


# -- the ledger --------------------------------------------------------------------------


def test_the_set_and_its_epoch_change_at_the_boundary_after_registration() -> None:
    chain = joined_chain()
    states = [LedgerState(GENESIS)]
    for certified in chain.blocks:
        states.append(states[-1].apply_block(certified.block))
    assert [s.epoch for s in states] == [0, 0, 0, 0, 4]
    assert [len(s.validators) for s in states] == [4, 4, 4, 4, 5]
    assert NEWCOMERS[0].public_key in states[4].validators


def test_an_unchanged_set_keeps_its_epoch_at_a_boundary() -> None:
    chain = Chain()
    chain.filler(8)
    assert chain.state.height == 8 and chain.state.epoch == 0


def test_the_epoch_is_in_the_state_root_so_a_snapshot_cannot_lie_about_it() -> None:
    state = joined_chain().state
    plain = state.snapshot()
    assert LedgerState.from_snapshot(GENESIS, plain).epoch == 4
    try:
        LedgerState.from_snapshot(GENESIS, {**plain, "epoch": 0})
    except BlockInvalid:
        pass
    else:
        raise AssertionError("a snapshot with another epoch matched the root")


# -- messages and certificates -----------------------------------------------------------


def test_a_message_carries_its_signed_epoch_through_the_wire() -> None:
    message = sign_message(Prepare(view=2, seq=9, digest=bytes(32)), 1, VALIDATORS[1], 8)
    decoded = decode_frame(1, encode_frame(message))
    assert decoded.epoch == 8 and decoded.encoded == message.encoded
    assert SignatureCache(GENESIS.validator_keys(), 8, epoch=8).check(decoded)
    assert not SignatureCache(GENESIS.validator_keys(), 8, epoch=0).check(decoded)
    forged = type(decoded)(body=decoded.body, signer=1, signature=decoded.signature,
                           encoded=sign_message(decoded.body, 1, VALIDATORS[2], 0).encoded,
                           epoch=0)
    assert not SignatureCache(GENESIS.validator_keys(), 8, epoch=0).check(forged)


def test_a_frame_without_an_epoch_is_refused() -> None:
    import msgpack

    from consensus.codec import canonical

    body = Prepare(view=0, seq=1, digest=bytes(32))
    bare = canonical(body.to_plain())  # what version 1 signed
    frame = msgpack.packb([bare, 0, bytes(64)], use_bin_type=True)
    try:
        decode_frame(0, frame)
    except PeerProtocolError:
        pass
    else:
        raise AssertionError("a frame without an epoch decoded")


def test_a_certificate_is_valid_only_for_the_configuration_of_its_height() -> None:
    chain = joined_chain()
    chain.filler(1)
    before, after = LedgerState(GENESIS), chain.state
    fifth = chain.blocks[4]  # agreed by the five-member set of epoch 4
    states = [before]
    for certified in chain.blocks[:4]:
        states.append(states[-1].apply_block(certified.block))
    verify_commit_certificate(fifth.block, fifth.certificate, states[4].validators, 4)
    for validators, epoch in ((before.validators, 0), (after.validators, 0)):
        try:
            verify_commit_certificate(fifth.block, fifth.certificate, validators, epoch)
        except CertificateError:
            continue
        raise AssertionError("a certificate passed for another configuration")


# -- the replica -------------------------------------------------------------------------


def replica_of(signer: Ed25519Signer, recovered: Recovered | None = None) -> Replica:
    return Replica(signer=signer, genesis=GENESIS, recovered=recovered)


def feed(replica: Replica, blocks: list[CertifiedBlock], now_ms: int = 1_000) -> list[object]:
    return replica.handle(now_ms, CertifiedBlocksReceived(blocks=tuple(blocks)))


def test_a_passive_newcomer_becomes_a_member_at_the_boundary() -> None:
    chain = joined_chain()
    newcomer = replica_of(NEWCOMERS[0])
    start = newcomer.handle(0, Start())
    assert newcomer.index is None
    assert ValidatorsChanged(epoch=0, validators=GENESIS.validator_keys(), index=None) in start
    assert NeedBlocks(from_height=1) in start
    assert not [e for e in start if isinstance(e, Send | Broadcast)]
    effects = feed(newcomer, chain.blocks)
    assert newcomer.executed == 4 and newcomer.epoch == 4
    assert newcomer.index == newcomer.validators.index(NEWCOMERS[0].public_key)
    assert (newcomer.n, newcomer.f, newcomer.quorum) == (5, 1, 4)
    assert newcomer.view == 0 and newcomer.stable_seq == 4
    changed = [e for e in effects if isinstance(e, ValidatorsChanged)]
    assert changed == [ValidatorsChanged(epoch=4, validators=newcomer.validators,
                                         index=newcomer.index)]
    position = effects.index(changed[0])
    assert PersistView(view=0, in_view_change=False, epoch=4) in effects[:position]
    assert any(isinstance(e, PersistCheckpoint) and e.seq == 4 and e.proof == ()
               for e in effects[:position])


def test_a_member_forgets_the_old_epoch_and_signs_in_the_new_one() -> None:
    chain = joined_chain()
    member = replica_of(VALIDATORS[0])
    member.handle(0, Start())
    member.view = 3  # an old view and old votes must not survive the change
    member.prepares[(3, 9)] = {}
    feed(member, chain.blocks)
    assert member.epoch == 4 and member.view == 0 and not member.prepares
    assert member.own_checkpoint is not None and member.own_checkpoint.epoch == 4
    assert member.cache.epoch == 4 and member.cache.validators == chain.state.validators


def test_a_removed_validator_turns_passive_and_keeps_following() -> None:
    chain = Chain()
    leaver = VALIDATORS[3]
    chain.add([chain.tx(leaver, TxKind.UNSTAKE, 1)])  # below validator_stake_min
    chain.filler(5)
    replica = replica_of(leaver)
    replica.handle(0, Start())
    assert replica.index is not None
    effects = feed(replica, chain.blocks)
    assert replica.executed == 6 and replica.index is None and replica.n == 3
    assert ValidatorsChanged(epoch=4, validators=chain.state.validators, index=None) in effects
    timer = TimerId(kind=TimerKind.RETRANSMIT, generation=replica.timer_generation[
        TimerKind.RETRANSMIT])
    ticked = replica.handle(5_000, TimerFired(timer=timer))
    assert NeedBlocks(from_height=7) in ticked
    assert not [e for e in ticked if isinstance(e, Send | Broadcast)]
    answer = replica.handle(5_001, ClientRequest(tx=transfer(USERS[0], 6, USERS[1].public_key,
                                                              1).encoded, request_id=7))
    assert [type(e) for e in answer] == [ClientRejected]


def test_a_message_of_another_epoch_is_dropped_unverified_and_unblamed() -> None:
    replica = replica_of(VALIDATORS[0])
    replica.handle(0, Start())
    newer = sign_message(Prepare(view=0, seq=6, digest=bytes(32)), 1, VALIDATORS[2], 4)
    effects = replica.handle(2_000, MessageReceived(peer=1, message=newer))  # wrong signer too
    assert NeedBlocks(from_height=1) in effects
    assert not [e for e in effects if isinstance(e, PeerMisbehaved)]
    older = sign_message(Prepare(view=0, seq=1, digest=bytes(32)), 1, VALIDATORS[1], 0)
    chain = joined_chain()
    feed(replica, chain.blocks, 2_001)
    effects = replica.handle(2_002, MessageReceived(peer=1, message=older))
    assert effects == [] or not [e for e in effects if isinstance(e, PeerMisbehaved)]
    assert replica.counters["messages_other_epoch"] == 2
    assert replica.cache.verified == 0


def test_a_block_certified_by_the_wrong_set_is_refused() -> None:
    chain = joined_chain()
    chain.filler(1)
    fifth = chain.blocks[4]
    old_set = GENESIS.validator_keys()
    stale = CertifiedBlock(block=fifth.block, certificate=tuple(
        sign_message(Commit(view=0, seq=5, digest=fifth.block.block_hash), i, BY_KEY[k], 0)
        for i, k in enumerate(old_set))[:3])
    replica = replica_of(USERS[0])
    feed(replica, [*chain.blocks[:4], stale])
    assert replica.executed == 4 and replica.counters["blocks_rejected"] == 1
    feed(replica, [fifth])
    assert replica.executed == 5


def test_recovery_drops_a_view_and_slots_of_an_older_epoch() -> None:
    chain = joined_chain()
    state = chain.state
    head = chain.blocks[-1]
    recovered = Recovered(view=7, in_view_change=True, ledger=state,
                          last_certificate=head.certificate, stable_seq=0, stable_block=None,
                          stable_proof=(), stable_state=None, slots=(),
                          recent_blocks=tuple((c.block, c.certificate) for c in chain.blocks),
                          view_epoch=0)
    replica = replica_of(VALIDATORS[1], recovered)
    assert replica.epoch == 4 and replica.view == 0 and replica.phase.value == "normal"
    assert replica.stable_seq == 4 and replica.stable_block == head.block


operation = st.tuples(st.integers(0, len(EVERYONE) - 1),
                      st.sampled_from([TxKind.STAKE, TxKind.UNSTAKE,
                                       TxKind.REGISTER_VALIDATOR, TxKind.TRANSFER]),
                      st.integers(0, 30))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(operation, max_size=3), min_size=1, max_size=14),
       st.integers(0, len(EVERYONE) - 1), st.booleans())
def test_the_replica_configuration_always_follows_the_executed_state(
        blocks: list[list[tuple[int, TxKind, int]]], who: int, join: bool) -> None:
    chain = Chain()
    newcomer = EVERYONE.index(NEWCOMERS[1])
    if join:  # often enough a set change in the examples: a newcomer joins early
        blocks = [[(newcomer, TxKind.STAKE, 20), (newcomer, TxKind.REGISTER_VALIDATOR, 0)],
                  *blocks]
    for ops in blocks:
        txs = [chain.tx(EVERYONE[s], kind, amount * U // 2,
                        USERS[0].public_key if kind is TxKind.TRANSFER else b"")
               for s, kind, amount in ops]
        chain.add(txs)
        chain.nonces = {k: chain.state.account(k).nonce for k in chain.nonces}
    replica = replica_of(EVERYONE[who])
    replica.handle(0, Start())
    changes, epochs = 0, {0}
    for certified in chain.blocks:
        before = replica.epoch
        effects = feed(replica, [certified])
        state = replica.ledger
        assert replica.executed == certified.block.height
        assert (replica.validators, replica.epoch) == (state.validators, state.epoch)
        assert replica.n == len(state.validators)
        assert replica.quorum == quorum_size(replica.n)
        key = EVERYONE[who].public_key
        assert replica.index == (state.validators.index(key) if key in state.validators
                                 else None)
        changed = [e for e in effects if isinstance(e, ValidatorsChanged)]
        assert len(changed) == (state.epoch != before)
        changes += len(changed)
        assert state.epoch == 0 or state.epoch % GENESIS.params.epoch_length_blocks == 0
        epochs.add(state.epoch)
    assert changes == len(epochs) - 1


def write_chain(store: LedgerStore, chain: Chain, upto: int) -> list[LedgerState]:
    states = [LedgerState(GENESIS)]
    for certified in chain.blocks[:upto]:
        states.append(states[-1].apply_block(certified.block))
        store.write_batch([PersistBlock(block=certified.block,
                                        certificate=certified.certificate, state=states[-1])])
    return states


def test_the_store_gives_back_the_epoch_start_and_the_view_of_its_epoch(tmp_path) -> None:
    chain = joined_chain()
    chain.filler(1)
    store = LedgerStore(tmp_path / "ledger.sqlite", GENESIS)
    states = write_chain(store, chain, 5)
    store.write_batch([PersistView(view=0, in_view_change=False, epoch=4),
                       PersistCheckpoint(seq=4, block=chain.blocks[3].block, proof=(),
                                         state=states[4]),
                       PersistView(view=2, in_view_change=True, epoch=4)])
    recovered = store.recover()
    assert recovered is not None and recovered.view_epoch == 4
    replica = replica_of(VALIDATORS[2], recovered)
    assert (replica.epoch, replica.view, replica.phase.value) == (4, 2, "view_change")
    assert replica.stable_seq == 4 and replica.stable_state is not None
    assert replica._reported_stable() == (4, ())
    store.close()


def test_a_follower_store_turned_validator_starts_in_the_ledger_epoch(tmp_path) -> None:
    chain = joined_chain()
    chain.filler(2)
    store = LedgerStore(tmp_path / "ledger.sqlite", GENESIS)
    write_chain(store, chain, 6)  # what a follower wrote: blocks only, no view
    replica = replica_of(NEWCOMERS[0], store.recover())
    assert replica.epoch == 4 and replica.index is not None and replica.executed == 6
    assert replica.stable_seq == 6 and replica._reported_stable() == (4, ())
    effects = replica.handle(10, Start())
    assert ValidatorsChanged(epoch=4, validators=replica.validators,
                             index=replica.index) in effects
    store.close()


def test_a_waiting_pre_prepare_unlike_the_block_fetched_for_its_height_gets_no_prepare(
) -> None:
    """A backup holds a pre-prepare for a height it then executes from certified blocks:
    it may vote only for the block it executed, never for a conflicting one."""
    chain = Chain()
    chain.filler(2)
    other_state = LedgerState(GENESIS).apply_block(chain.blocks[0].block)
    conflicting, _ = other_state.build_block(
        other_state.last_timestamp_ms + 10,
        [tx(USERS[1], TxKind.TRANSFER, 0, 1, USERS[0].public_key)])
    assert conflicting.height == 2 and conflicting.block_hash != chain.blocks[1].block.block_hash
    for block, blamed in ((conflicting, True), (chain.blocks[1].block, False)):
        backup = replica_of(VALIDATORS[1])
        backup.handle(0, Start())
        pre_prepare = sign_message(PrePrepare(view=0, seq=2, block=block), 0, VALIDATORS[0], 0)
        backup.handle(10, MessageReceived(peer=0, message=pre_prepare))
        effects = feed(backup, chain.blocks)
        assert backup.executed == 2
        prepares = [e for e in effects if isinstance(e, Broadcast)
                    and isinstance(e.message.body, Prepare) and e.message.body.seq == 2]
        blames = [e for e in effects if isinstance(e, PeerMisbehaved)]
        assert bool(blames) is blamed and bool(prepares) is not blamed
