"""DhtNode core: hostile input is counted and never crashes; timeouts, persistence, and a
small in-memory network doing put/get/provide."""

from __future__ import annotations

import heapq
import random
from collections import deque

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from dht.keys import key_from_bytes, key_to_bytes
from dht.lookup import LookupResult, LookupState
from dht.messages import MessageKind, Request, Response, encode_message
from dht.node import DhtNode
from dht.node_effects import (
    Bootstrap,
    CommandFinished,
    DhtConfig,
    DropPeer,
    FindNode,
    FrameReceived,
    GetProviders,
    GetValue,
    MessageReceived,
    PersistTable,
    Provide,
    PutValue,
    RequestFailed,
    SendRequest,
    SendResponse,
    SetTimer,
    StoreResult,
    TimerFired,
    TimerKind,
)
from dht.peer import PeerInfo
from dht.records import Ed25519Signer, RecordBody, pk_key, sign_record
from dht.routing import RoutingTable


def info(index: int) -> PeerInfo:
    return PeerInfo(peer_id=b"node-%d" % index, addrs=(f"mem://{index}",))


def make_node(index: int = 0, **config: int) -> DhtNode:
    return DhtNode(own=info(index), rng=random.Random(index), config=DhtConfig(**config))


def responses(effects: list) -> list[Response]:
    return [e.message for e in effects if isinstance(e, SendResponse)]


def request_frame(request: Request) -> bytes:
    return encode_message(request)


SIGNER = Ed25519Signer(SigningKey(b"\x07" * 32))


def record(seq: int = 1, expires_at_ms: int = 10**8, by: Ed25519Signer = SIGNER):
    body = RecordBody(key=pk_key(by.public_key), value=b"v%d" % seq, seq=seq,
                      expires_at_ms=expires_at_ms, publisher=b"node-0")
    return sign_record(body, by)


# -- hostile input ------------------------------------------------------------------------


def test_garbage_frames_are_counted_and_the_peer_dropped_past_the_threshold() -> None:
    node = make_node(peer_score_drop=5)
    attacker = info(66)
    drops = []
    for _ in range(5):
        drops += [e for e in node.handle(0, FrameReceived(peer=attacker, frame=b"\xc1junk"))
                  if isinstance(e, DropPeer)]
    stats = node.statistics()
    assert stats.counter("hostile_inputs") == 5
    assert dict(stats.hostile_by_reason)["not msgpack"] == 5
    assert [d.peer_id for d in drops] == [attacker.peer_id]
    assert stats.counter("peers_dropped") == 1


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=512))
def test_node_never_raises_on_arbitrary_frames(frame: bytes) -> None:
    node = make_node()
    effects = node.handle(0, FrameReceived(peer=info(9), frame=frame))
    stats = node.statistics()
    assert stats.counter("hostile_inputs") + stats.counter("requests_served") \
        + stats.counter("responses_unexpected") == 1
    assert all(isinstance(e, SendResponse | SetTimer | SendRequest | DropPeer)
               for e in effects)


def test_deeply_nested_frame_is_rejected_not_crashing() -> None:
    node = make_node()
    node.handle(0, FrameReceived(peer=info(9), frame=b"\x91" * 100_000 + b"\xc0"))
    assert node.statistics().counter("hostile_inputs") == 1


def test_forged_put_value_is_refused_counted_and_not_stored() -> None:
    node = make_node()
    good = record()
    forged = type(good)(body=good.body, signer=good.signer, sig=bytes(64))
    request = Request(request_id=1, kind=MessageKind.PUT_VALUE, key=good.body.key,
                      record=forged)
    (response,) = responses(node.handle(0, FrameReceived(peer=info(3),
                                                        frame=request_frame(request))))
    assert response.error == "bad_signature"
    assert node.records.get(good.body.key, 0) is None
    assert dict(node.statistics().hostile_by_reason)["bad_signature"] == 1


def test_stale_put_value_is_refused_but_not_scored_as_hostile() -> None:
    node = make_node()
    for seq, expected in ((2, None), (1, "stale_record")):
        request = Request(request_id=seq, kind=MessageKind.PUT_VALUE,
                          key=record(seq).body.key, record=record(seq))
        (response,) = responses(node.handle(0, MessageReceived(peer=info(3),
                                                              message=request)))
        assert response.error == expected
    stats = node.statistics()
    assert stats.counter("hostile_inputs") == 0
    assert stats.counter("records_refused") == 1
    assert node.records.get(record(2).body.key, 0).body.seq == 2


def test_add_provider_flood_from_one_peer_is_capped_and_counted() -> None:
    node = make_node(provider_keys_per_peer_max=50, peer_score_drop=1000)
    flooder = info(4)
    errors = 0
    for index in range(200):
        request = Request(request_id=index, kind=MessageKind.ADD_PROVIDER,
                          key=b"cid-%d" % index, provider=flooder)
        (response,) = responses(node.handle(0, MessageReceived(peer=flooder,
                                                              message=request)))
        errors += response.error is not None
    assert node.providers.count == 50
    assert errors == 150
    assert dict(node.statistics().hostile_by_reason)["provider_flood"] == 150


def test_add_provider_for_someone_else_is_rejected() -> None:
    node = make_node()
    request = Request(request_id=1, kind=MessageKind.ADD_PROVIDER, key=b"cid",
                      provider=info(5))
    assert responses(node.handle(0, MessageReceived(peer=info(4), message=request))) == []
    assert node.providers.count == 0
    assert dict(node.statistics().hostile_by_reason)["wrong_provider"] == 1


def test_unexpected_and_wrong_kind_responses() -> None:
    node = make_node()
    stray = Response(request_id=12345, kind=MessageKind.PING)
    node.handle(0, MessageReceived(peer=info(1), message=stray))
    assert node.statistics().counter("responses_unexpected") == 1
    effects = node.handle(0, Bootstrap(command_id=1, peers=(info(1),)))
    sent = [e for e in effects if isinstance(e, SendRequest)]
    assert len(sent) == 1 and sent[0].message.kind is MessageKind.FIND_NODE
    wrong = Response(request_id=sent[0].message.request_id, kind=MessageKind.PING)
    node.handle(1, MessageReceived(peer=info(1), message=wrong))
    assert dict(node.statistics().hostile_by_reason)["wrong_kind"] == 1


# -- lookups, timeouts, persistence -------------------------------------------------------


def test_lookup_with_silent_peers_times_out_and_finishes() -> None:
    node = make_node(request_timeout_ms=1000)
    peers = tuple(info(i) for i in range(1, 8))
    node.handle(0, Bootstrap(command_id=None, peers=peers))
    finished, order = None, 0
    effects = node.handle(0, FindNode(command_id=7, target=key_from_bytes(b"t")))
    timers = [(e.at_ms, order := order + 1, e) for e in effects if isinstance(e, SetTimer)]
    heapq.heapify(timers)
    while finished is None:
        assert node._lookups and all(t.lookup.in_flight <= 3 for t in node._lookups.values())
        now, _, timer = heapq.heappop(timers)
        for effect in node.handle(now, TimerFired(timer=timer.timer)):
            if isinstance(effect, SetTimer):
                heapq.heappush(timers, (effect.at_ms, order := order + 1, effect))
            if isinstance(effect, CommandFinished) and effect.command_id == 7:
                finished = effect.result
    assert isinstance(finished, LookupResult)
    assert finished.outcome is LookupState.COMPLETED
    assert finished.closest == ()
    assert finished.peers_failed >= 2 * len(peers)  # every peer tried twice
    assert node.statistics().counter("requests_timed_out") >= 14


def test_deadline_finishes_a_lookup_with_what_it_has() -> None:
    node = make_node(lookup_deadline_ms=10_000, request_timeout_ms=5_000)
    node.handle(0, Bootstrap(command_id=None, peers=(info(1), info(2))))
    effects = node.handle(0, FindNode(command_id=3, target=5))
    deadline = next(e for e in effects if isinstance(e, SetTimer)
                    and e.timer.kind is TimerKind.LOOKUP_DEADLINE)
    (done,) = [e for e in node.handle(deadline.at_ms, TimerFired(timer=deadline.timer))
               if isinstance(e, CommandFinished)]
    assert done.result.outcome is LookupState.DEADLINE


def test_request_failure_input_counts_like_a_timeout() -> None:
    node = make_node()
    effects = node.handle(0, Bootstrap(command_id=1, peers=(info(1),)))
    (request,) = [e for e in effects if isinstance(e, SendRequest)]
    effects = node.handle(1, RequestFailed(request_id=request.message.request_id))
    (retry,) = [e for e in effects if isinstance(e, SendRequest)]
    effects = node.handle(2, RequestFailed(request_id=retry.message.request_id))
    (done,) = [e for e in effects if isinstance(e, CommandFinished)]
    assert done.result.peers_failed == 2
    assert node.statistics().counter("requests_failed") == 2


def _fail_every_request(node: DhtNode, now: int, effects: list) -> list:
    """Answer each request in `effects` with RequestFailed, and those that follow, until
    none is left; returns every effect seen."""
    seen, queue = [], list(effects)
    while queue:
        effect = queue.pop(0)
        seen.append(effect)
        if isinstance(effect, SendRequest):
            queue += node.handle(now, RequestFailed(request_id=effect.message.request_id))
    return seen


def _retry_timers(effects: list) -> list[SetTimer]:
    return [e for e in effects if isinstance(e, SetTimer)
            and e.timer.kind is TimerKind.BOOTSTRAP_RETRY]


def test_a_bootstrap_nobody_answered_is_retried_with_doubling_delays_until_one_answers() -> None:
    node = make_node(bootstrap_retry_initial_ms=1000, bootstrap_retry_max_ms=4000)
    now, delays = 0, []
    effects = _fail_every_request(node, now, node.handle(now, Bootstrap(
        command_id=None, peers=(info(1),))))
    for _ in range(4):
        (timer,) = _retry_timers(effects)
        delays.append(timer.at_ms - now)
        now = timer.at_ms
        effects = node.handle(now, TimerFired(timer=timer.timer))
        sent = [e for e in effects if isinstance(e, SendRequest)]
        # Failures evicted the peer from the table long ago; the retry still asks it.
        assert [e.peer for e in sent] == [info(1)]
        effects = _fail_every_request(node, now, effects)
    assert delays == [1000, 2000, 4000, 4000]
    assert len(node.table) == 0
    assert node.statistics().counter("bootstrap_retries") == 4

    (timer,) = _retry_timers(effects)
    effects = node.handle(timer.at_ms, TimerFired(timer=timer.timer))
    (request,) = [e for e in effects if isinstance(e, SendRequest)]
    answer = Response(request_id=request.message.request_id, kind=MessageKind.FIND_NODE)
    effects = node.handle(timer.at_ms + 1, MessageReceived(peer=info(1), message=answer))
    assert not _retry_timers(effects)  # joined: no more retries
    assert len(node.table) == 1


def test_concurrent_failed_bootstraps_arm_one_retry_and_a_join_cancels_it() -> None:
    node = make_node(bootstrap_retry_initial_ms=1000)
    first = node.handle(0, Bootstrap(command_id=None, peers=(info(1),)))
    second = node.handle(0, Bootstrap(command_id=None, peers=(info(2),)))
    effects = _fail_every_request(node, 0, first + second)
    (timer,) = _retry_timers(effects)
    # A third bootstrap joins before the timer fires: the timer then does nothing.
    effects = node.handle(1, Bootstrap(command_id=None, peers=(info(3),)))
    for request in [e for e in effects if isinstance(e, SendRequest)]:
        answer = Response(request_id=request.message.request_id, kind=MessageKind.FIND_NODE)
        effects += node.handle(2, MessageReceived(peer=request.peer, message=answer))
    assert not _retry_timers(effects)
    assert not node.handle(timer.at_ms, TimerFired(timer=timer.timer))
    assert node.statistics().counter("bootstrap_retries") == 0


def test_maintenance_persists_the_table_and_it_reloads() -> None:
    node = make_node(maintenance_interval_ms=1000)
    effects = node.handle(0, Bootstrap(command_id=None, peers=tuple(info(i)
                                                                   for i in range(1, 30))))
    maintenance = next(e for e in effects if isinstance(e, SetTimer)
                       and e.timer.kind is TimerKind.MAINTENANCE)
    effects = node.handle(1000, TimerFired(timer=maintenance.timer))
    (persist,) = [e for e in effects if isinstance(e, PersistTable)]
    assert any(isinstance(e, SetTimer) and e.timer.kind is TimerKind.MAINTENANCE
               for e in effects)
    data = msgpack.unpackb(msgpack.packb(persist.snapshot, use_bin_type=True), raw=False)
    table = RoutingTable.from_snapshot(data, info(0).peer_id)
    restored = DhtNode(own=info(0), rng=random.Random(1), table=table)
    assert list(restored.table.peers()) == list(node.table.peers())


def test_config_relations_are_checked_and_named() -> None:
    with pytest.raises(ValueError, match="alpha must be <= k"):
        DhtConfig(alpha=30)
    with pytest.raises(ValueError, match="record_republish_interval_ms"):
        DhtConfig(record_republish_interval_ms=DhtConfig().record_ttl_ms)
    with pytest.raises(ValueError, match="lookups_max must be >= 1"):
        DhtConfig(lookups_max=0)


# -- a small in-memory network ------------------------------------------------------------


class MemoryNetwork:
    """Nodes exchanging encoded frames in FIFO order; timers never fire (no loss)."""

    def __init__(self, size: int) -> None:
        self.nodes = {i: make_node(i) for i in range(size)}
        self.queue: deque[tuple[int, object]] = deque()
        self.results: dict[int, object] = {}

    def inject(self, index: int, event: object) -> None:
        self.queue.append((index, event))
        steps = 0
        while self.queue:
            target, item = self.queue.popleft()
            for effect in self.nodes[target].handle(steps, item):
                if isinstance(effect, SendRequest | SendResponse):
                    destination = int(effect.peer.addrs[0].removeprefix("mem://"))
                    frame = encode_message(effect.message)
                    self.queue.append((destination, FrameReceived(peer=info(target),
                                                                  frame=frame)))
                elif isinstance(effect, CommandFinished):
                    self.results[effect.command_id] = effect.result
            steps += 1
            assert steps < 200_000


def test_put_get_and_provide_across_a_memory_network() -> None:
    network = MemoryNetwork(40)
    for index in range(1, 40):
        network.inject(index, Bootstrap(command_id=None, peers=(info(index - 1),)))
    publisher = network.nodes[5]
    rec = record(expires_at_ms=10**8)
    network.inject(5, PutValue(command_id=1, record=rec))
    stored = network.results[1]
    assert isinstance(stored, StoreResult) and stored.peers_sent == 20
    holders = [n for n in network.nodes.values() if n.records.get(rec.body.key, 0)]
    closest = sorted(network.nodes.values(), key=lambda n: n.own.key ^ key_from_bytes(
        rec.body.key))
    assert {n.own.peer_id for n in closest[:20]} <= {n.own.peer_id for n in holders}
    network.inject(33, GetValue(command_id=2, key=rec.body.key))
    assert network.results[2].record == rec
    network.inject(7, Provide(command_id=3, key=b"cid-x"))
    network.inject(21, GetProviders(command_id=4, key=b"cid-x"))
    assert [p.peer_id for p in network.results[4].providers] == [info(7).peer_id]
    network.inject(12, FindNode(command_id=5, target=info(30).key))
    assert network.results[5].closest[0] == info(30)
    assert publisher.statistics().counter("hostile_inputs") == 0


def test_find_node_request_returns_k_closest_excluding_the_requester() -> None:
    node = make_node()
    node.handle(0, Bootstrap(command_id=None, peers=tuple(info(i) for i in range(1, 60))))
    request = Request(request_id=9, kind=MessageKind.FIND_NODE, key=key_to_bytes(77))
    (response,) = responses(node.handle(1, MessageReceived(peer=info(3), message=request)))
    assert len(response.closer) == 20
    assert info(3) not in response.closer
    expected = [p for p in node.table.closest(77, 21) if p != info(3)][:20]
    assert list(response.closer) == expected


def test_get_providers_includes_the_provider_records_we_store_ourselves() -> None:
    node = make_node(0)
    key = b"content-key"
    provider = info(7)
    add = Request(request_id=1, kind=MessageKind.ADD_PROVIDER, key=key, provider=provider)
    node.handle(0, FrameReceived(peer=provider, frame=request_frame(add)))
    effects = node.handle(1, GetProviders(command_id=5, key=key))
    # The lookup may also ask peers; with only the provider in our table it asks it, and
    # even before any answer our own stored record must be part of the result.
    for effect in effects:
        if isinstance(effect, SendRequest):
            node.handle(2, RequestFailed(request_id=effect.message.request_id))
    finished = [e for e in node.handle(10_000_000, TimerFired(timer=_deadline_of(effects)))
                if isinstance(e, CommandFinished)]
    finished += [e for e in effects if isinstance(e, CommandFinished)]
    results = [f.result for f in finished if f.command_id == 5]
    assert results and isinstance(results[0], LookupResult)
    assert provider.peer_id in [p.peer_id for p in results[0].providers]


def _deadline_of(effects: list) -> object:
    timers = [e.timer for e in effects if isinstance(e, SetTimer)
              and e.timer.kind is TimerKind.LOOKUP_DEADLINE]
    return timers[0]
