"""The registry store (prsm_node/registry/store.py): queries, ordering, expiry, restart
persistence, and the sync pages it serves (with prsm_node/registry/sync.py's checks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prsm_node.registry import sync
from prsm_node.registry.messages import Entry, Kind, Limits, decode_entry
from prsm_node.registry.store import Received, RegistryStore
from prsm_node.registry.view import Version

from .helpers import (
    CID,
    CID2,
    HOUR_MS,
    NOW_MS,
    capability_fields,
    make,
    model_fields,
    offer_fields,
    signer,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RegistryStore]:
    opened = RegistryStore(tmp_path / "registry.sqlite")
    yield opened
    opened.close()


def put(store: RegistryStore, *entries: Entry, source: str = "gossip") -> int:
    return store.write([Received(entry, NOW_MS, source) for entry in entries])


def test_models_by_name_architecture_and_tag(store: RegistryStore) -> None:
    llm = make(Kind.MODEL, seed=1)
    vision = make(
        Kind.MODEL,
        seed=2,
        key=CID2,
        fields=model_fields("resnet", CID2) | {"architecture": "cnn", "tags": ["vision"]},
    )
    assert put(store, llm, vision) == 2
    assert [m["name"] for m in store.models(NOW_MS)] == ["gpt-mini", "resnet"]
    assert [m["name"] for m in store.models(NOW_MS, name="resnet")] == ["resnet"]
    assert [m["name"] for m in store.models(NOW_MS, architecture="transformer")] == ["gpt-mini"]
    assert [m["name"] for m in store.models(NOW_MS, tag="vision")] == ["resnet"]
    assert store.models(NOW_MS, tag="llm", architecture="cnn") == []
    assert len(store.models(NOW_MS, limit=1)) == 1
    found = store.models(NOW_MS, cid=CID)[0]
    assert found["signer"] == signer(1).public_key.hex() and found["source"] == "gossip"
    assert found["manifest_cid"] == CID and "kind" not in found


def test_nodes_holding_a_model_combine_announcements_and_capabilities(
    store: RegistryStore,
) -> None:
    announcer = make(Kind.MODEL, seed=1)
    holder = make(Kind.CAPABILITY, seed=2, fields=capability_fields(models=(CID,)))
    bystander = make(Kind.CAPABILITY, seed=3, fields=capability_fields(gpus=1))
    put(store, announcer, holder, bystander)
    assert store.model_cids("gpt-mini", NOW_MS) == [CID]
    holders = store.holders([CID], NOW_MS)
    assert set(holders) == {announcer.peer_id, holder.peer_id}
    assert [n["peer_id"] for n in store.nodes(NOW_MS, gpu=True)] == [bystander.peer_id]
    assert len(store.nodes(NOW_MS)) == 2
    assert [n["peer_id"] for n in store.nodes(NOW_MS, peer_ids=sorted(holders))] == [
        holder.peer_id
    ]
    assert store.known_models([CID, CID2], NOW_MS) == [CID]


def test_offers_filter_by_kind_and_model(store: RegistryStore) -> None:
    put(
        store,
        make(Kind.OFFER, key="a"),
        make(Kind.OFFER, key="b", fields=offer_fields(job_kind="distillation")),
        make(Kind.OFFER, key="c", fields=offer_fields(model_cid=CID2)),
    )
    assert {o["key"] for o in store.offers(NOW_MS)} == {"a", "b", "c"}
    assert [o["key"] for o in store.offers(NOW_MS, job_kind="distillation")] == ["b"]
    assert [o["key"] for o in store.offers(NOW_MS, model_cid=CID2)] == ["c"]
    assert len(store.offers(NOW_MS, limit=2)) == 2


def test_a_batch_written_out_of_order_cannot_go_back_in_time(store: RegistryStore) -> None:
    newer, older = make(Kind.CAPABILITY, seq=5), make(Kind.CAPABILITY, seq=4)
    assert put(store, newer, older) == 1
    assert store.nodes(NOW_MS)[0]["seq"] == 5
    tagged = make(Kind.MODEL, seq=1)
    retagged = make(Kind.MODEL, seq=2, fields=model_fields() | {"tags": ["new"]})
    put(store, tagged, retagged)
    assert store.models(NOW_MS, tag="llm") == []
    assert len(store.models(NOW_MS, tag="new")) == 1


def test_expired_entries_are_invisible_then_deleted_with_their_index_rows(
    store: RegistryStore,
) -> None:
    short = make(Kind.MODEL, expires_at_ms=NOW_MS + 1000)
    holder = make(Kind.CAPABILITY, seed=2, fields=capability_fields(models=(CID,)))
    put(store, short, holder)
    later = NOW_MS + 1000
    assert store.models(later) == []
    assert set(store.holders([CID], later)) == {holder.peer_id}
    assert store.delete_expired(later) == 1
    assert store.counts(later) == {"model": 0, "capability": 1, "offer": 0}
    assert store.delete_expired(NOW_MS + 2 * HOUR_MS) == 1
    assert store.holders([CID], NOW_MS) == {}


def test_the_view_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    entries = [make(Kind.MODEL, seed=seed, seq=seed) for seed in range(1, 4)]
    entries.append(make(Kind.OFFER, seed=1, key="offer-9"))
    first = RegistryStore(path)
    put(first, *entries)
    first.close()
    reopened = RegistryStore(path)
    try:
        versions = dict(reopened.versions(NOW_MS))
        assert versions == {entry.id: Version.of(entry) for entry in entries}
        assert len(reopened.models(NOW_MS)) == 3
        own = reopened.own_bodies(signer(1).public_key, Kind.OFFER, NOW_MS)
        assert [body["key"] for body in own] == ["offer-9"]
        assert list(reopened.versions(NOW_MS + 2 * HOUR_MS)) == []
    finally:
        reopened.close()


def test_sync_pages_carry_everything_once_and_verify_like_gossip(
    store: RegistryStore, tmp_path: Path
) -> None:
    entries = [make(Kind.MODEL, seed=seed, seq=seed) for seed in range(1, 41)]
    entries += [make(Kind.CAPABILITY, seed=seed) for seed in range(1, 41)]
    put(store, *entries)
    client = RegistryStore(tmp_path / "client.sqlite")
    put(client, *entries[:10])  # seeds 1..10 hold only their model: digests differ
    try:
        pulled = _pull_all(server=store, client=client, limit=7, bytes_max=2048)
        assert sorted(pulled) == sorted(entry.wire for entry in entries)
        for data in pulled:
            decode_entry(data, limits=Limits(), now_ms=NOW_MS)
        put(client, *[decode_entry(d, limits=Limits(), now_ms=NOW_MS) for d in pulled])
        signers = [signer(seed).public_key for seed in range(1, 41)]
        assert client.digests(signers, NOW_MS) == store.digests(signers, NOW_MS)
        assert _pull_all(server=store, client=client, limit=7, bytes_max=2048) == []
    finally:
        client.close()


def _pull_all(server: RegistryStore, client: RegistryStore, limit: int, bytes_max: int) -> list:
    """The sync client's walk, over the stores directly (the trio shell does the same over
    the wire in prsm_node/registry/service.py)."""
    pulled: list[bytes] = []
    after = b""
    while True:
        request = sync.SummaryRequest(after=after, limit=limit)
        signers, done = server.summary(request.after, request.limit, NOW_MS)
        answer = sync.parse_summary_answer(
            {"signers": [[s, d] for s, d in signers], "done": done}, request
        )
        own = client.digests([s for s, _ in answer.signers], NOW_MS)
        differing = [s for s, digest in answer.signers if own[s] != digest]
        for start in range(0, len(differing), sync.SIGNERS_PER_ENTRIES_MAX):
            cursor = None
            while True:
                ask = sync.EntriesRequest(
                    tuple(differing[start : start + sync.SIGNERS_PER_ENTRIES_MAX]), cursor,
                    bytes_max,
                )
                page, following = server.entries_page(ask.signers, ask.after, bytes_max, NOW_MS)
                reply = sync.parse_entries_answer(
                    {"entries": page, "next": list(following) if following else None}, ask
                )
                pulled += reply.entries
                if reply.next is None:
                    break
                cursor = reply.next
        if answer.done:
            return pulled
        after = answer.signers[-1][0]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"op": "dump"},
        {"op": "summary", "after": b"", "limit": 0},
        {"op": "summary", "after": "x", "limit": 5},
        {"op": "summary", "after": b"", "limit": 5, "extra": 1},
        {"op": "entries", "signers": [], "after": None, "bytes_max": 4096},
        {"op": "entries", "signers": [b"x"], "after": None, "bytes_max": 4096},
        {"op": "entries", "signers": [bytes(32)] * 65, "after": None, "bytes_max": 4096},
        {"op": "entries", "signers": [bytes(32)], "after": [b"x", "model", ""], "bytes_max": 4096},
        {"op": "entries", "signers": [bytes(32)], "after": None, "bytes_max": 10},
    ],
)
def test_bad_sync_requests_are_refused(payload: object) -> None:
    with pytest.raises(sync.SyncProtocolError):
        sync.parse_request(payload)


def test_bad_sync_answers_are_refused() -> None:
    summary = sync.SummaryRequest(after=bytes([5]) * 32, limit=2)
    ok = [bytes([6]) * 32, bytes(16)]
    for answer in (
        {"signers": [ok], "done": "yes"},
        {"signers": [ok, ok], "done": True},  # not increasing
        {"signers": [[bytes([4]) * 32, bytes(16)]], "done": True},  # before `after`
        {"signers": [ok, [bytes([7]) * 32, bytes(16)], [bytes([8]) * 32, bytes(16)]],
         "done": False},  # more than asked
        {"signers": [], "done": False},  # no progress
        {"signers": [[bytes([6]) * 32, bytes(15)]], "done": True},
    ):
        with pytest.raises(sync.SyncProtocolError):
            sync.parse_summary_answer(answer, summary)
    entries = sync.EntriesRequest(signers=(bytes(32),), after=(bytes(32), "model", "k"),
                                  bytes_max=1024)
    for answer in (
        {"entries": [b"x" * 1025], "next": None},  # larger than asked
        {"entries": ["text"], "next": None},
        {"entries": [b"x"], "next": [bytes(32), "model", "a"]},  # cursor went backwards
        {"entries": [b"x"], "next": [bytes([1]) * 32, "model", "z"]},  # signer not asked
        {"entries": [], "next": [bytes(32), "offer", "z"]},  # empty page, yet more
    ):
        with pytest.raises(sync.SyncProtocolError):
            sync.parse_entries_answer(answer, entries)
