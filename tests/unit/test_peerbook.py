from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_node.net.peerbook import PeerBook, PeerState, peer_id_of_address

SELF = "12D3KooWself"


def address(peer: str) -> str:
    return f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"


def make_book(**overrides: int) -> PeerBook:
    settings_ = {
        "known_peers_max": 8,
        "peers_max": 4,
        "backoff_initial_ms": 100,
        "backoff_max_ms": 1600,
        "dial_attempts_max": 3,
    }
    settings_.update(overrides)
    return PeerBook(self_peer_id=SELF, rng=random.Random(7), **settings_)


def test_peer_id_of_address_needs_a_p2p_part() -> None:
    assert peer_id_of_address(address("QmA")) == "QmA"
    with pytest.raises(ValueError):
        peer_id_of_address("/ip4/127.0.0.1/tcp/1")


def test_bootstrap_peer_is_dialled_at_once() -> None:
    book = make_book()
    book.add_bootstrap(address("A"))
    assert book.due_dials(0) == [("A", address("A"))]
    assert book.due_dials(0) == []  # already dialing


def test_failed_dials_back_off_exponentially_with_bounded_jitter() -> None:
    book = make_book(dial_attempts_max=100)
    book.add_bootstrap(address("A"))
    now, delays = 0, []
    for _ in range(7):
        assert book.due_dials(now) == [("A", address("A"))]
        book.dial_failed("A", now)
        due = book.next_dial_ms()
        assert due is not None
        delays.append(due - now)
        assert book.due_dials(due - 1) == []
        now = due
    bases = [100, 200, 400, 800, 1600, 1600, 1600]
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base + base // 4


def test_learned_peer_is_forgotten_after_repeated_failures_but_bootstrap_is_not() -> None:
    book = make_book(dial_attempts_max=2)
    book.add_bootstrap(address("B"))
    book.learn(address("L"), 0)
    now = 0
    for _ in range(2):
        now = max(now, book.next_dial_ms() or 0)
        for peer, _addr in book.due_dials(now):
            book.dial_failed(peer, now)
        now = book.next_dial_ms() or now
    assert book.address_of("L") is None
    assert book.address_of("B") == address("B")


def test_disconnect_schedules_a_redial() -> None:
    book = make_book()
    book.add_bootstrap(address("A"))
    book.due_dials(0)
    book.connected("A", 5)
    assert book.due_dials(10_000) == []
    book.disconnected("A", 20)
    due = book.next_dial_ms()
    assert due is not None and 120 <= due <= 145
    assert book.due_dials(due) == [("A", address("A"))]


def test_own_address_is_never_an_entry() -> None:
    book = make_book()
    assert book.learn(address(SELF), 0) is False
    book.add_bootstrap(address(SELF))
    assert len(book) == 0


def test_inbound_peer_learned_later_counts_as_connected() -> None:
    book = make_book()
    book.connected("X", 0)
    assert book.connection_count() == 1
    book.learn(address("X"), 1)
    assert book.due_dials(10) == []
    assert book.connected_addresses() == [address("X")]


def test_snapshot_keeps_addresses_and_bootstrap_flags() -> None:
    book = make_book()
    book.add_bootstrap(address("B"))
    book.learn(address("L"), 0)
    assert book.snapshot() == [
        {"address": address("B"), "bootstrap": True},
        {"address": address("L"), "bootstrap": False},
    ]


peer_ids = st.sampled_from([f"P{index}" for index in range(12)])
operations = st.lists(
    st.tuples(
        st.sampled_from(["learn", "bootstrap", "connected", "disconnected", "failed", "dial"]),
        peer_ids,
        st.integers(0, 500),
    ),
    max_size=120,
)


@settings(max_examples=500)
@given(operations)
def test_bounds_hold_under_any_sequence_of_events(ops: list[tuple[str, str, int]]) -> None:
    book = make_book(known_peers_max=6, peers_max=3)
    bootstraps: set[str] = set()
    now = 0
    for name, peer, step in ops:
        now += step
        if name == "learn":
            book.learn(address(peer), now)
        elif name == "bootstrap" and (peer in bootstraps or len(bootstraps) < 6):
            bootstraps.add(peer)
            book.add_bootstrap(address(peer))
        elif name == "connected":
            book.connected(peer, now)
        elif name == "disconnected":
            book.disconnected(peer, now)
        elif name == "failed":
            book.dial_failed(peer, now)
        else:
            dials = book.due_dials(now)
            assert len({peer for peer, _ in dials}) == len(dials)
            assert SELF not in {peer for peer, _ in dials}
            if dials:  # a dial is only issued inside the connection budget
                assert book.connection_count() + _dialing(book) <= 3
        assert len(book) <= 6
        for bootstrap in bootstraps:
            assert book.address_of(bootstrap) == address(bootstrap)


def _dialing(book: PeerBook) -> int:
    return sum(entry.state is PeerState.DIALING for entry in book._entries.values())
