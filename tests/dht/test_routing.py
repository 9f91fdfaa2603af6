"""Routing table: bucket bounds, XOR ordering, eviction by ping, refresh, persistence."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dht.errors import SnapshotError
from dht.keys import (
    KEY_BITS,
    bucket_index,
    common_prefix_length,
    key_from_bytes,
    random_key_in_bucket,
)
from dht.peer import PeerInfo
from dht.routing import AddStatus, RoutingTable


def peer(index: int) -> PeerInfo:
    return PeerInfo(peer_id=b"peer-%d" % index, addrs=(f"sim://{index}",))


def peers_in_bucket(table: RoutingTable, index: int, count: int) -> list[PeerInfo]:
    found, candidate = [], 0
    while len(found) < count:
        info = peer(candidate)
        candidate += 1
        if info.key != table.own_key and bucket_index(table.own_key, info.key) == index:
            found.append(info)
    return found


def test_bucket_index_is_common_prefix_length() -> None:
    own = key_from_bytes(b"own")
    assert bucket_index(own, own ^ 1) == KEY_BITS - 1
    assert bucket_index(own, own ^ (1 << (KEY_BITS - 1))) == 0
    with pytest.raises(ValueError):
        bucket_index(own, own)


@given(st.integers(min_value=0, max_value=KEY_BITS - 1), st.integers(min_value=0))
def test_random_key_in_bucket_lands_in_that_bucket(index: int, seed: int) -> None:
    own = key_from_bytes(b"own-%d" % seed)
    key = random_key_in_bucket(own, index, random.Random(seed))
    assert common_prefix_length(own, key) == index


@settings(max_examples=60, deadline=None)
@given(
    ids=st.lists(st.integers(min_value=0, max_value=5000), min_size=0, max_size=300),
    target_seed=st.integers(min_value=0, max_value=10_000),
    count=st.integers(min_value=0, max_value=40),
    bucket_size=st.integers(min_value=1, max_value=20),
)
def test_closest_equals_brute_force_and_buckets_stay_bounded(
    ids: list[int], target_seed: int, count: int, bucket_size: int
) -> None:
    table = RoutingTable(b"own", bucket_size=bucket_size, replacements_max=3)
    for now_ms, index in enumerate(ids):
        table.add(peer(index), now_ms)
        table.check_invariants()
    occupancy = table.statistics().bucket_occupancy
    assert all(size <= bucket_size for _, size in occupancy)
    target = key_from_bytes(b"target-%d" % target_seed)
    expected = sorted(table.peers(), key=lambda p: p.key ^ target)[:count]
    result = table.closest(target, count)
    assert result == expected
    distances = [p.key ^ target for p in result]
    assert distances == sorted(distances)


def test_closest_to_own_key_is_sorted() -> None:
    table = RoutingTable(b"own")
    for index in range(500):
        table.add(peer(index), index)
    result = table.closest(table.own_key, 30)
    assert result == sorted(table.peers(), key=lambda p: p.key ^ table.own_key)[:30]


def test_full_bucket_returns_oldest_entry_to_ping_instead_of_evicting() -> None:
    table = RoutingTable(b"own", bucket_size=3, replacements_max=2)
    first, second, third, newcomer, later = peers_in_bucket(table, 0, 5)
    for now_ms, info in enumerate((first, second, third)):
        assert table.add(info, now_ms).status is AddStatus.ADDED
    outcome = table.add(newcomer, 10)
    assert outcome.status is AddStatus.PENDING
    assert outcome.ping == first  # least recently seen
    assert newcomer.peer_id not in table
    # a second newcomer while the ping is out: parked, no second ping
    assert table.add(later, 11) == table.add(later, 11)
    assert table.add(later, 12).ping is None
    assert table.statistics().pings_pending == 1


def test_failed_ping_evicts_oldest_and_promotes_candidate() -> None:
    table = RoutingTable(b"own", bucket_size=2, replacements_max=2)
    first, second, newcomer = peers_in_bucket(table, 0, 3)
    table.add(first, 1)
    table.add(second, 2)
    ping = table.add(newcomer, 3).ping
    assert ping == first
    promoted = table.ping_failed(first.peer_id)
    assert promoted == newcomer
    assert first.peer_id not in table
    assert newcomer.peer_id in table and second.peer_id in table
    table.check_invariants()


def test_answered_ping_moves_oldest_to_tail_and_drops_candidate() -> None:
    table = RoutingTable(b"own", bucket_size=2, replacements_max=2)
    first, second, newcomer, other = peers_in_bucket(table, 0, 4)
    table.add(first, 1)
    table.add(second, 2)
    assert table.add(newcomer, 3).ping == first
    table.ping_answered(first.peer_id, 4)
    assert table.statistics().replacements_total == 0
    assert newcomer.peer_id not in table
    # first is now most recent, so second is the next one to ping
    assert table.add(other, 5).ping == second


def test_replacement_cache_is_bounded() -> None:
    table = RoutingTable(b"own", bucket_size=2, replacements_max=3)
    infos = peers_in_bucket(table, 0, 12)
    for now_ms, info in enumerate(infos):
        table.add(info, now_ms)
    assert table.statistics().replacements_total == 3
    assert len(table) == 2


def test_repeated_failures_drop_an_entry() -> None:
    table = RoutingTable(b"own", failures_max=3)
    info = peer(1)
    table.add(info, 0)
    assert table.record_failure(info.peer_id) is None
    assert table.record_failure(info.peer_id) is None
    assert info.peer_id in table
    table.record_failure(info.peer_id)
    assert info.peer_id not in table


def test_seen_again_resets_failures() -> None:
    table = RoutingTable(b"own", failures_max=2)
    info = peer(1)
    table.add(info, 0)
    table.record_failure(info.peer_id)
    table.add(info, 1)
    table.record_failure(info.peer_id)
    assert info.peer_id in table


def test_self_is_never_added() -> None:
    table = RoutingTable(b"own")
    assert table.add(PeerInfo(peer_id=b"own"), 0).status is AddStatus.SELF
    assert len(table) == 0


def test_refresh_returns_random_keys_only_in_idle_buckets() -> None:
    table = RoutingTable(b"own", created_ms=0)
    for index in range(200):
        table.add(peer(index), 0)
    rng = random.Random(7)
    top = max(index for index, _ in table.statistics().bucket_occupancy)
    table.mark_refreshed(random_key_in_bucket(table.own_key, 0, rng), 50_000)
    keys = table.refresh_keys(60_000, 60_000, rng, count_max=100)
    indices = [common_prefix_length(table.own_key, key) for key in keys]
    assert 0 not in indices  # refreshed 10 s ago
    assert indices == list(range(1, top + 2))
    assert table.refresh_keys(60_001, 60_000, rng, count_max=100) == []  # now fresh
    assert len(table.refresh_keys(200_000, 60_000, rng, count_max=2)) == 2


def test_snapshot_round_trips_through_msgpack() -> None:
    table = RoutingTable(b"own")
    for index in range(300):
        table.add(peer(index), index)
    data = msgpack.unpackb(msgpack.packb(table.snapshot(), use_bin_type=True), raw=False)
    restored = RoutingTable.from_snapshot(data, b"own")
    restored.check_invariants()
    assert list(restored.peers()) == list(table.peers())
    target = key_from_bytes(b"x")
    assert restored.closest(target, 20) == table.closest(target, 20)
    assert not restored.changed


@pytest.mark.parametrize(
    "data",
    [
        None,
        {"version": 99, "own_id": b"own", "peers": []},
        {"version": 1, "own_id": b"other", "peers": []},
        {"version": 1, "own_id": b"own", "peers": [[b"x", "not-a-list", 0]]},
        {"version": 1, "own_id": b"own", "peers": [[b"", [], 0]]},
        {"version": 1, "own_id": b"own", "peers": "nope"},
    ],
)
def test_corrupt_or_foreign_snapshot_is_rejected(data: object) -> None:
    with pytest.raises(SnapshotError):
        RoutingTable.from_snapshot(data, b"own")


def test_statistics_report_bucket_occupancy() -> None:
    table = RoutingTable(b"own")
    for index in range(100):
        table.add(peer(index), 0)
    stats = table.statistics()
    assert stats.peers_total == len(table) == sum(size for _, size in stats.bucket_occupancy)
    assert stats.buckets_nonempty == len(stats.bucket_occupancy)
