"""Lookup state machine: alpha bound, termination, convergence on a static network."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from dht.errors import LookupStateError
from dht.keys import key_from_bytes
from dht.lookup import TRANSITIONS, Lookup, LookupKind, LookupResult, LookupState
from dht.peer import PeerInfo
from dht.records import Ed25519Signer, RecordBody, SignedRecord, pk_key, sign_record
from dht.routing import RoutingTable

K = 20
ALPHA = 3


def make_network(size: int, seed: int, bucket_size: int = K) -> dict[bytes, RoutingTable]:
    """Every node's table filled by meeting all others in a random order."""
    rng = random.Random(seed)
    infos = [PeerInfo(peer_id=b"n-%d-%d" % (seed, i)) for i in range(size)]
    tables = {}
    for info in infos:
        table = RoutingTable(info.peer_id, bucket_size=bucket_size)
        order = infos[:]
        rng.shuffle(order)
        for now_ms, other in enumerate(order):
            table.add(other, now_ms)
        tables[info.peer_id] = table
    return tables


def drive(
    lookup: Lookup,
    tables: dict[bytes, RoutingTable],
    rng: random.Random,
    dead: frozenset[bytes] = frozenset(),
    answer=None,
) -> LookupResult:
    """Answer the lookup's requests in a random order; dead peers fail."""
    outstanding = list(lookup.start())
    steps = 0
    while not lookup.done:
        assert lookup.in_flight <= lookup.alpha
        assert outstanding, "a running lookup must have a request in flight"
        peer = outstanding.pop(rng.randrange(len(outstanding)))
        if peer.peer_id in dead:
            outstanding.extend(lookup.on_failure(peer.peer_id))
        else:
            closer = tables[peer.peer_id].closest(lookup.target, K)
            extra = answer(peer) if answer else {}
            outstanding.extend(lookup.on_response(peer, closer, **extra))
        steps += 1
        assert steps < 5_000, "lookup did not terminate"
    assert lookup.in_flight <= lookup.alpha
    return lookup.result(now_ms=1)


def new_lookup(tables, own: bytes, target: int, kind=LookupKind.FIND_NODE, key=b"", **kw):
    seeds = tables[own].closest(target, K)
    return Lookup(kind=kind, target=target, key=key, own_id=own, seeds=seeds, started_ms=0,
                  k=K, alpha=ALPHA, **kw)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(min_value=0, max_value=3), choice=st.integers(min_value=0))
def test_find_node_converges_on_true_closest_of_static_network(seed: int, choice: int) -> None:
    tables = make_network(300, seed)
    rng = random.Random(choice)
    own = rng.choice(list(tables))
    target = rng.getrandbits(256)
    result = drive(new_lookup(tables, own, target), tables, rng)
    others = sorted((t.own for pid, t in tables.items() if pid != own),
                    key=lambda p: p.key ^ target)
    assert result.outcome is LookupState.COMPLETED
    assert result.closest[0] == others[0]
    assert list(result.closest) == others[:K]
    assert result.rounds >= 1
    assert result.peers_contacted >= K


def test_find_node_skips_dead_peers_and_still_finds_closest_live() -> None:
    tables = make_network(300, 11)
    rng = random.Random(5)
    for trial in range(10):
        own = rng.choice(list(tables))
        target = rng.getrandbits(256)
        ranked = sorted((t.own for pid, t in tables.items() if pid != own),
                        key=lambda p: p.key ^ target)
        dead = frozenset(p.peer_id for p in ranked[:3])  # the three closest are down
        result = drive(new_lookup(tables, own, target), tables, rng, dead)
        live = [p for p in ranked if p.peer_id not in dead]
        assert result.closest[0] == live[0], trial
        assert result.peers_failed >= 3 * 2  # each dead peer tried attempts_max = 2 times


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=1000),
    dead_fraction=st.floats(min_value=0.0, max_value=0.9),
    alpha=st.integers(min_value=1, max_value=5),
)
def test_never_more_than_alpha_in_flight_and_always_terminates(
    seed: int, dead_fraction: float, alpha: int
) -> None:
    tables = NETWORK
    rng = random.Random(seed)
    dead = frozenset(pid for pid in tables if rng.random() < dead_fraction)
    own = rng.choice(list(tables))
    target = rng.getrandbits(256)
    lookup = Lookup(kind=LookupKind.FIND_NODE, target=target, key=b"", own_id=own,
                    seeds=tables[own].closest(target, K), started_ms=0, k=K, alpha=alpha)
    result = drive(lookup, tables, rng, dead)
    assert result.outcome is LookupState.COMPLETED
    assert all(p.peer_id not in dead for p in result.closest)
    assert len(result.closest) <= K


NETWORK = make_network(120, 99)


def test_empty_table_converges_at_once() -> None:
    lookup = Lookup(kind=LookupKind.FIND_NODE, target=1, key=b"", own_id=b"me", seeds=[],
                    started_ms=0)
    assert lookup.start() == []
    assert lookup.state is LookupState.COMPLETED
    assert lookup.result(0).closest == ()


def test_deadline_stops_the_lookup_and_says_so() -> None:
    tables = make_network(100, 3)
    own = next(iter(tables))
    lookup = new_lookup(tables, own, 12345)
    assert len(lookup.start()) == ALPHA
    lookup.on_deadline()
    result = lookup.result(now_ms=60_000)
    assert result.outcome is LookupState.DEADLINE
    assert not result.completed
    assert result.finished_ms == 60_000


def test_inputs_after_finish_are_illegal_transitions() -> None:
    lookup = Lookup(kind=LookupKind.FIND_NODE, target=1, key=b"", own_id=b"me", seeds=[],
                    started_ms=0)
    lookup.start()
    with pytest.raises(LookupStateError, match="COMPLETED"):
        lookup.on_response(PeerInfo(peer_id=b"x"), [])
    with pytest.raises(LookupStateError):
        lookup.on_deadline()
    running = Lookup(kind=LookupKind.FIND_NODE, target=1, key=b"", own_id=b"me",
                     seeds=[PeerInfo(peer_id=b"x")], started_ms=0)
    with pytest.raises(LookupStateError):
        running.result(0)


def test_transition_table_has_only_running_as_a_source() -> None:
    for state, moves in TRANSITIONS.items():
        assert bool(moves) == (state is LookupState.RUNNING)


def _records(key: bytes, signer: Ed25519Signer) -> dict[int, SignedRecord]:
    return {seq: sign_record(RecordBody(key=key, value=b"v%d" % seq, seq=seq,
                                        expires_at_ms=10**9, publisher=b"p"), signer)
            for seq in (1, 2)}


def test_get_value_stops_at_quorum_and_keeps_the_newest_record() -> None:
    tables = make_network(200, 4)
    signer = Ed25519Signer(SigningKey(b"\x01" * 32))
    key = pk_key(signer.public_key)
    target = key_from_bytes(key)
    holders = sorted(tables.values(), key=lambda t: t.own_key ^ target)[:6]
    versions = {t.own.peer_id: (2 if i % 2 else 1) for i, t in enumerate(holders)}
    records = _records(key, signer)
    own = sorted(tables.values(), key=lambda t: t.own_key ^ target)[-1].own.peer_id

    def answer(peer: PeerInfo) -> dict:
        seq = versions.get(peer.peer_id)
        return {"record": records[seq]} if seq else {}

    lookup = new_lookup(tables, own, target, LookupKind.GET_VALUE, key, quorum=4)
    result = drive(lookup, tables, random.Random(1), answer=answer)
    assert result.outcome is LookupState.FOUND
    assert result.records_found == 4
    assert result.record is not None and result.record.body.seq == 2
    outdated = {p.peer_id for p in result.peers_outdated}
    assert outdated and all(versions[pid] == 1 for pid in outdated)
    assert all(p.peer_id not in versions for p in result.peers_without_value)


def test_get_value_without_any_record_converges_with_none() -> None:
    tables = make_network(100, 5)
    own = next(iter(tables))
    lookup = new_lookup(tables, own, 42, LookupKind.GET_VALUE, b"/pk/none")
    result = drive(lookup, tables, random.Random(2))
    assert result.outcome is LookupState.COMPLETED
    assert result.record is None and result.records_found == 0
    assert len(result.peers_without_value) == K


def test_get_providers_stops_at_the_provider_limit() -> None:
    tables = make_network(100, 6)
    own = next(iter(tables))
    counter = iter(range(10_000))

    def answer(peer: PeerInfo) -> dict:
        return {"providers": [PeerInfo(peer_id=b"prov-%d" % next(counter))]}

    lookup = new_lookup(tables, own, 7, LookupKind.GET_PROVIDERS, b"cid", providers_max=5)
    result = drive(lookup, tables, random.Random(3), answer=answer)
    assert result.outcome is LookupState.FOUND
    assert len(result.providers) == 5


def test_candidates_are_bounded() -> None:
    many = [PeerInfo(peer_id=b"c-%d" % i) for i in range(1000)]
    lookup = Lookup(kind=LookupKind.FIND_NODE, target=0, key=b"", own_id=b"me", seeds=many,
                    started_ms=0, candidates_max=50)
    first = lookup.start()
    assert len(first) == ALPHA
    closest = sorted(many, key=lambda p: p.key)[:ALPHA]
    assert first == closest
    assert len(lookup._candidates) == 50
