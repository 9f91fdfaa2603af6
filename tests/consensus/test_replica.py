"""PBFT replica behaviours, each on the seeded simulator or driven input by input."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.certificates import (
    CertificateError,
    SignatureCache,
    quorum_size,
    verify_commit_certificate,
)
from consensus.errors import PeerProtocolError, ReplicaStateError
from consensus.messages import (
    Checkpoint,
    Commit,
    Forward,
    NewView,
    Prepare,
    PrePrepare,
    StateRequest,
    ViewChange,
    decode_frame,
    encode_frame,
    sign_message,
)
from consensus.replica import Phase, Replica, Trigger
from consensus.replica_effects import (
    Broadcast,
    ClientRejected,
    ClientRequest,
    MessageReceived,
    PeerMisbehaved,
    PersistSlot,
    PersistView,
    ReplicaConfig,
    Start,
    TimerFired,
    TimerId,
    TimerKind,
)
from simulations.pbft_byzantine import ByzantineReplica
from simulations.sim import NetworkModel
from tests.consensus.cluster import Cluster


def test_normal_case_commits_blocks_with_verifiable_certificates() -> None:
    cluster = Cluster(4)
    cluster.submit(40, at_ms=100)
    cluster.sim.run_until(5_000)
    heights = cluster.heights()
    assert min(heights) >= 1 and len(set(heights)) == 1
    cluster.assert_agreement()
    validators = cluster.genesis.validator_keys()
    committed = sum(len(c.block.txs) for c in cluster.commits[0])
    assert committed == 40
    for commit in cluster.commits[1]:
        verify_commit_certificate(commit.block, commit.certificate, validators)
    commit = cluster.commits[2][0]
    with pytest.raises(CertificateError):
        verify_commit_certificate(commit.block, commit.certificate[:2], validators)
    other = cluster.commits[2][-1].block
    if other.block_hash != commit.block.block_hash:
        with pytest.raises(CertificateError):
            verify_commit_certificate(other, commit.certificate, validators)
    forged = dataclasses.replace(commit.certificate[0], signer=3 - commit.certificate[0].signer)
    with pytest.raises(CertificateError):
        verify_commit_certificate(commit.block, (forged, *commit.certificate[1:]), validators)


def test_view_change_after_primary_silence() -> None:
    cluster = Cluster(4, wrap=lambda a, r, rng: ByzantineReplica(r, "silent", r.signer, rng)
                      if a == 0 else r)
    cluster.submit(20, at_ms=100, targets=[1, 2, 3])  # what the silent one gets is lost
    cluster.sim.run_until(15_000)
    for address in (1, 2, 3):
        core = cluster.core(address)
        assert core.view >= 1 and core.phase is Phase.NORMAL
        assert sum(len(c.block.txs) for c in cluster.commits[address]) == 20
    cluster.assert_agreement([1, 2, 3])


def test_equivocating_primary_is_recorded_as_evidence_and_replaced() -> None:
    cluster = Cluster(4, seed=3, wrap=lambda a, r, rng: ByzantineReplica(
        r, "equivocate", r.signer, rng) if a == 0 else r)
    cluster.submit(30, at_ms=100, targets=[1, 2, 3])
    cluster.sim.run_until(30_000)
    evidence = cluster.evidence()
    assert evidence, "no replica saw both pre-prepares"
    first, second = evidence[0].evidence.first, evidence[0].evidence.second
    assert first.signer == second.signer == 0
    assert first.body.seq == second.body.seq and first.body.view == second.body.view
    assert first.body.block.block_hash != second.body.block.block_hash
    cluster.assert_agreement([1, 2, 3])
    assert all(cluster.core(a).view >= 1 for a in (1, 2, 3))
    assert all(sum(len(c.block.txs) for c in cluster.commits[a]) == 30 for a in (1, 2, 3))


def test_lagging_replica_catches_up_from_checkpoint_snapshot() -> None:
    config = ReplicaConfig(checkpoint_interval=2, window_max=4, blocks_retained_max=4,
                           view_change_timeout_ms=1_000, retransmit_interval_ms=200)
    cluster = Cluster(4, config=config)
    cluster.sim.schedule(50, lambda s: s.partition([[0, 1, 2], [3]]))
    for round_index in range(12):  # one transaction per block: 12 blocks
        cluster.submit(1, at_ms=100 + round_index * 300, to=0)
    cluster.sim.schedule(5_000, lambda s: s.heal())
    cluster.sim.run_until(4_900)
    assert cluster.core(3).executed == 0 and cluster.core(0).executed >= 10
    assert cluster.core(0).stable_seq > config.blocks_retained_max
    cluster.sim.run_until(9_000)
    lagger = cluster.core(3)
    assert lagger.executed == cluster.core(0).executed
    assert lagger.ledger.state_root == cluster.core(0).ledger.state_root
    assert lagger.counters["state_transfers"] >= 1
    cluster.assert_agreement()


def test_crashed_replica_restarts_from_disk_and_never_contradicts_itself() -> None:
    cluster = Cluster(4, seed=5, network=NetworkModel(loss=0.05))
    cluster.submit(60, at_ms=100, spacing_ms=50, targets=[0, 2, 3])  # clients avoid the victim
    for at_ms in (700, 1_500, 2_300):
        cluster.sim.schedule(at_ms, lambda s: s.crash(1))
        cluster.sim.schedule(at_ms + 300, lambda s: (s.restart(1), s.inject(1, Start())))
    cluster.sim.run_until(20_000)
    cluster.assert_agreement()
    heights = cluster.heights()
    assert len(set(heights)) == 1
    assert sum(len(c.block.txs) for c in cluster.commits[0]) == 60


def _direct_replica(index: int = 1) -> tuple[Cluster, Replica]:
    cluster = Cluster(4)
    replica = Replica(index=index, signer=cluster.signers[index], genesis=cluster.genesis,
                      config=cluster.config)
    replica.handle(0, Start())
    return cluster, replica


def _proposal(cluster: Cluster, view: int = 0, seq: int = 1):
    primary = Replica(index=view % 4, signer=cluster.signers[view % 4],
                      genesis=cluster.genesis, config=cluster.config)
    block, _ = primary.ledger.build_block(10, [cluster.transfer()])
    return block, sign_message(PrePrepare(view=view, seq=seq, block=block), view % 4,
                               cluster.signers[view % 4])


def test_persist_precedes_every_message_that_depends_on_it() -> None:
    cluster, replica = _direct_replica(1)
    block, pre_prepare = _proposal(cluster)
    effects = replica.handle(20, MessageReceived(peer=0, message=pre_prepare))
    kinds = [type(e) for e in effects]
    persist, prepare = kinds.index(PersistSlot), kinds.index(Broadcast)
    assert persist < prepare and type(effects[prepare].message.body) is Prepare
    vote = sign_message(Prepare(view=0, seq=1, digest=block.block_hash), 2, cluster.signers[2])
    effects = replica.handle(30, MessageReceived(peer=2, message=vote))  # own + 2 + primary
    kinds = [type(e) for e in effects]
    commit_at = next(i for i, e in enumerate(effects) if type(e) is Broadcast
                     and type(e.message.body) is Commit)
    slot_at = max(i for i, k in enumerate(kinds) if k is PersistSlot)
    assert slot_at < commit_at and effects[slot_at].record.prepared is not None
    effects = replica.handle(5_000, TimerFired(timer=TimerId(
        kind=TimerKind.PROGRESS, generation=replica.timer_generation[TimerKind.PROGRESS])))
    kinds = [type(e) for e in effects]
    change_at = next(i for i, e in enumerate(effects) if type(e) is Broadcast
                     and type(e.message.body) is ViewChange)
    assert kinds.index(PersistView) < change_at
    assert effects[change_at].message.body.prepared[0].pre_prepare == pre_prepare


def test_forged_and_misdirected_messages_are_peer_errors_without_state_change() -> None:
    cluster, replica = _direct_replica(1)
    block, pre_prepare = _proposal(cluster)
    forged = dataclasses.replace(pre_prepare, signature=bytes(64))
    effects = replica.handle(20, MessageReceived(peer=0, message=forged))
    assert [type(e) for e in effects] == [PeerMisbehaved] and not replica.slots
    relayed = replica.handle(20, MessageReceived(peer=2, message=pre_prepare))
    assert [type(e) for e in relayed] == [PeerMisbehaved] and not replica.slots
    not_primary = sign_message(PrePrepare(view=0, seq=1, block=block), 2, cluster.signers[2])
    effects = replica.handle(20, MessageReceived(peer=2, message=not_primary))
    assert [type(e) for e in effects] == [PeerMisbehaved]
    assert replica.statistics().peer_errors == 3


def test_client_request_rejected_with_reason_code() -> None:
    cluster, replica = _direct_replica(1)
    tx = cluster.transfer()
    bad = bytearray(tx.encoded)
    bad[-3] ^= 0xFF
    effects = replica.handle(5, ClientRequest(tx=bytes(bad), request_id=7))
    assert len(effects) == 1 and isinstance(effects[0], ClientRejected)
    assert effects[0].reason_code == "bad_signature" and effects[0].request_id == 7
    effects = replica.handle(5, ClientRequest(tx=tx.encoded, request_id=8))
    assert not any(type(e).__name__ == "Send" for e in effects)  # queued for the batch
    effects = replica.handle(6, ClientRequest(tx=tx.encoded, request_id=9))
    assert effects[0].reason_code == "duplicate"


def _fire(replica: Replica, kind: TimerKind, now_ms: int) -> list[object]:
    return replica.handle(now_ms, TimerFired(timer=TimerId(
        kind=kind, generation=replica.timer_generation[kind])))


def test_a_replica_forwards_its_clients_transactions_to_every_replica_in_one_batch() -> None:
    cluster, replica = _direct_replica(1)
    txs = [cluster.transfer() for _ in range(3)]
    for request_id, tx in enumerate(txs):
        replica.handle(5, ClientRequest(tx=tx.encoded, request_id=request_id))
    sent = [e for e in _fire(replica, TimerKind.FORWARD, 10)
            if type(e).__name__ in ("Send", "Broadcast")]
    assert len(sent) == 1 and type(sent[0]).__name__ == "Broadcast"
    forward = sent[0].message
    assert type(forward.body) is Forward
    assert forward.body.txs == tuple(t.encoded for t in txs)
    assert not [e for e in _fire(replica, TimerKind.FORWARD, 20)
                if type(e).__name__ in ("Send", "Broadcast")]
    # Another backup admits them on arrival, so a block holding them needs no new checks.
    other = Replica(index=2, signer=cluster.signers[2], genesis=cluster.genesis,
                    config=cluster.config)
    other.handle(0, Start())
    other.handle(30, MessageReceived(peer=1, message=forward))
    assert all(other.mempool.known(t.encoded) == t for t in txs)


def test_illegal_phase_transition_names_phase_and_trigger() -> None:
    _, replica = _direct_replica(1)
    with pytest.raises(ReplicaStateError, match=r"normal.*timeout"):
        replica._transition(Trigger.TIMEOUT)


def test_every_message_kind_round_trips_through_the_wire_codec() -> None:
    cluster, _ = _direct_replica(1)
    block, pre_prepare = _proposal(cluster)
    signer = cluster.signers[1]
    prepare = sign_message(Prepare(view=0, seq=1, digest=block.block_hash), 1, signer)
    from consensus.messages import PreparedProof
    proof = PreparedProof(pre_prepare=pre_prepare, prepares=(prepare,))
    change = sign_message(ViewChange(new_view=1, stable_seq=0, checkpoint_proof=(),
                                     prepared=(proof,)), 1, signer)
    bodies = [Forward(txs=(b"x",)), Prepare(view=0, seq=1, digest=block.block_hash),
              Commit(view=0, seq=1, digest=block.block_hash),
              Checkpoint(seq=4, digest=block.block_hash), StateRequest(height=3),
              NewView(view=1, view_changes=(change,), pre_prepares=(pre_prepare,))]
    for message in [pre_prepare, change, *(sign_message(b, 1, signer) for b in bodies)]:
        assert decode_frame(1, encode_frame(message)) == message
    with pytest.raises(PeerProtocolError):
        decode_frame(1, b"\x93\xc4\x01x\x01\xc4\x40" + bytes(64))
    with pytest.raises(PeerProtocolError):
        decode_frame(1, encode_frame(prepare), size_max=10)


def test_signature_cache_verifies_each_message_once_and_is_bounded() -> None:
    cluster, _ = _direct_replica(1)
    cache = SignatureCache(cluster.genesis.validator_keys(), size_max=2)
    messages = [sign_message(Checkpoint(seq=4 * i, digest=bytes(32)), 1, cluster.signers[1])
                for i in range(1, 4)]
    assert cache.check(messages[0]) and cache.check(messages[0])
    assert (cache.verified, cache.hits) == (1, 1)
    for message in messages:
        cache.check(message)
    assert len(cache._verified) == 2
    assert not cache.check(dataclasses.replace(messages[0], signer=2))


def test_quorum_sizes() -> None:
    assert [quorum_size(n) for n in (1, 4, 5, 7, 10)] == [1, 3, 4, 5, 7]
    assert quorum_size(4, "quorum-2f") == 2
