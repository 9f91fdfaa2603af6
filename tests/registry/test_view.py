"""The view's merge rules (prsm_node/registry/view.py): newer seq wins, stale, duplicate
and conflicting versions are refused, expiry, and the caps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prsm_node.registry.messages import Kind
from prsm_node.registry.view import Verdict, Version, View

from .helpers import CID, CID2, HOUR_MS, NOW_MS, make, model_fields


def view(entries_max: int = 100, per_signer: int = 10) -> View:
    return View(entries_max=entries_max, entries_per_signer_max=per_signer)


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40))
def test_the_highest_seq_wins_whatever_the_arrival_order(seqs: list[int]) -> None:
    held = view()
    for index, seq in enumerate(seqs):
        entry = make(Kind.CAPABILITY, seq=seq)
        verdict = held.admit(entry, NOW_MS)
        highest_before = max(seqs[:index], default=0)
        if seq > highest_before:
            assert verdict in (Verdict.NEW, Verdict.NEWER)
        elif seq == highest_before:
            assert verdict is Verdict.DUPLICATE
        else:
            assert verdict is Verdict.STALE
    version = held.version(make(Kind.CAPABILITY).id)
    assert version is not None and version.seq == max(seqs)
    assert len(held) == 1


def test_same_seq_with_another_body_is_a_conflict_and_first_seen_wins() -> None:
    held = view()
    first = make(Kind.MODEL, seq=5)
    other = make(Kind.MODEL, seq=5, fields=model_fields(name="renamed"))
    assert held.admit(first, NOW_MS) is Verdict.NEW
    assert held.admit(other, NOW_MS) is Verdict.CONFLICT
    assert held.version(first.id) == Version.of(first)


def test_entries_are_per_signer_kind_and_key() -> None:
    held = view()
    assert held.admit(make(Kind.MODEL, seed=1), NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.MODEL, seed=2), NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.MODEL, seed=1, fields=model_fields(cid=CID2), key=CID2),
                      NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.CAPABILITY, seed=1), NOW_MS) is Verdict.NEW
    assert len(held) == 4 and held.signers() == 2


def test_expiry_forgets_and_an_expired_version_is_replaced_by_anything_live() -> None:
    held = view()
    newer = make(Kind.CAPABILITY, seq=9, expires_at_ms=NOW_MS + 1000)
    held.admit(newer, NOW_MS)
    older_but_live = make(Kind.CAPABILITY, seq=3, expires_at_ms=NOW_MS + HOUR_MS)
    assert held.admit(older_but_live, NOW_MS) is Verdict.STALE
    assert held.admit(older_but_live, NOW_MS + 1000) is Verdict.NEWER
    assert held.expire(NOW_MS + 2000) == []  # the replacement lives on
    assert held.expire(NOW_MS + HOUR_MS) == [newer.id]
    assert len(held) == 0 and held.signers() == 0


def test_per_signer_and_total_caps_refuse_new_entries_but_not_replacements() -> None:
    held = view(entries_max=3, per_signer=2)
    keys = [f"offer-{index}" for index in range(3)]
    assert held.admit(make(Kind.OFFER, key=keys[0]), NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.OFFER, key=keys[1]), NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.OFFER, key=keys[2]), NOW_MS) is Verdict.SIGNER_FULL
    assert held.admit(make(Kind.OFFER, key=keys[0], seq=2), NOW_MS) is Verdict.NEWER
    assert held.admit(make(Kind.OFFER, seed=2, key="x"), NOW_MS) is Verdict.NEW
    assert held.admit(make(Kind.OFFER, seed=3, key="y"), NOW_MS) is Verdict.VIEW_FULL
    held.expire(NOW_MS + HOUR_MS)
    assert held.admit(make(Kind.OFFER, seed=3, key="y", expires_at_ms=NOW_MS + 2 * HOUR_MS),
                      NOW_MS + HOUR_MS) is Verdict.NEW


def test_the_expiry_heap_stays_bounded_under_many_replacements() -> None:
    held = view()
    for seq in range(1, 3000):
        held.admit(make(Kind.MODEL, seq=seq, key=CID), NOW_MS)
    assert len(held) == 1
    assert len(held._expiry) <= 4 * len(held) + 1024 + 1
    assert held.expire(NOW_MS + HOUR_MS) == [make(Kind.MODEL).id]


def test_restore_rebuilds_what_admit_held() -> None:
    first, second = view(), view()
    entries = [make(Kind.MODEL, seed=seed, seq=seed) for seed in range(1, 6)]
    for entry in entries:
        first.admit(entry, NOW_MS)
        second.restore(entry.id, Version.of(entry))
    for entry in entries:
        assert second.version(entry.id) == first.version(entry.id)
        assert second.judge(entry, NOW_MS) is Verdict.DUPLICATE
    assert CID in {entry.id.key for entry in entries}
