"""The fetch session, driven by a randomised fake network: safety, liveness, blame."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.cid import CODEC_DAG_PB, CODEC_RAW, Cid, raw_cid
from storage.errors import InvalidMessageError, SessionStateError
from storage.exchange import (
    AdoptBlock,
    BlockVerified,
    Cancel,
    DropPeer,
    FetchSession,
    Finished,
    FrameReceived,
    LocalBlocks,
    MessageReceived,
    NeedProviders,
    ProviderAdded,
    ProviderRemoved,
    ReadLocal,
    SendWant,
    SessionConfig,
    SessionState,
    SetTimer,
    Start,
    StoreBlock,
    TimerFired,
)
from storage.exchange_messages import (
    BlockReply,
    DontHave,
    TokenBucket,
    WantBlocks,
    answer_want,
    decode_message,
    encode_message,
)
from storage.unixfs import build_bytes, read_file
from tests.storage.helpers import pattern

BEHAVIOURS = ("honest", "partial", "corrupt", "silent", "flaky", "liar")


@dataclass
class FakePeer:
    name: bytes
    behaviour: str
    has: set[Cid]
    gone: bool = False


@dataclass
class Harness:
    """The shell's side, with a seeded scheduler deciding what happens next."""

    blocks: dict[Cid, bytes]
    local: dict[Cid, bytes]
    peers: dict[bytes, FakePeer]
    reserve: list[FakePeer]
    rng: random.Random
    session: FetchSession
    now_ms: int = 0
    pending: list[tuple[bytes, object]] = field(default_factory=list)  # (peer, message)
    timers: list[tuple[int, tuple[str, int]]] = field(default_factory=list)
    outstanding: set[tuple[bytes, Cid]] = field(default_factory=set)
    requests: dict[int, tuple[bytes, tuple[Cid, ...]]] = field(default_factory=dict)
    dropped: dict[bytes, DropPeer] = field(default_factory=dict)
    local_reads: list[tuple[Cid, ...]] = field(default_factory=list)
    finished: Finished | None = None
    lanes: bool = False  # blocks that hash right arrive as a transfer lane's BlockVerified
    lane_files: dict[str, tuple[Cid, bytes]] = field(default_factory=dict)  # not adopted

    def feed(self, event: object) -> None:
        for effect in self.session.handle(self.now_ms, event):  # type: ignore[arg-type]
            self.apply(effect)

    def apply(self, effect: object) -> None:
        if isinstance(effect, ReadLocal):
            self.local_reads.append(effect.cids)
            found = tuple((c, self.local[c]) for c in effect.cids if c in self.local)
            missing = tuple(c for c in effect.cids if c not in self.local)
            self.feed(LocalBlocks(found=found, missing=missing))
        elif isinstance(effect, SendWant):
            for cid in effect.message.cids:
                assert (effect.peer, cid) not in self.outstanding, "asked twice at once"
                self.outstanding.add((effect.peer, cid))
            self.requests[effect.message.request_id] = (effect.peer, effect.message.cids)
            self.serve(self.peers[effect.peer], effect.message)
        elif isinstance(effect, StoreBlock):
            assert effect.block.cid.matches(effect.block.data)
            self.local[effect.block.cid] = effect.block.data
        elif isinstance(effect, AdoptBlock):
            cid, data = self.lane_files.pop(effect.staged)  # a KeyError: adopted twice
            assert cid == effect.cid and len(data) == effect.size
            assert cid not in self.local, "a block adopted after it was stored"
            self.local[cid] = data
        elif isinstance(effect, DropPeer):
            self.dropped[effect.peer] = effect
            self.forget(effect.peer)
        elif isinstance(effect, SetTimer):
            self.timers.append((effect.at_ms, effect.timer))
        elif isinstance(effect, NeedProviders):
            if self.reserve:
                peer = self.reserve.pop()
                self.peers[peer.name] = peer
                self.feed(ProviderAdded(peer=peer.name))
            else:
                self.feed(Cancel(reason="no providers"))
        elif isinstance(effect, Finished):
            assert self.finished is None
            self.finished = effect

    def forget(self, peer: bytes) -> None:
        self.outstanding = {(p, c) for p, c in self.outstanding if p != peer}

    def serve(self, peer: FakePeer, want: WantBlocks) -> None:
        if peer.behaviour == "silent" or peer.gone:
            return
        for reply in answer_want(want, lambda c: self.blocks[c] if c in peer.has else None):
            if isinstance(reply, BlockReply) and peer.behaviour == "corrupt" \
                    and self.rng.random() < 0.5:
                reply = BlockReply(request_id=reply.request_id, cid=reply.cid,
                                   data=reply.data + b"!")
            if isinstance(reply, DontHave) and peer.behaviour == "liar":
                continue  # never answers what it lacks: only the timeout saves us
            self.pending.append((peer.name, reply))

    def step(self) -> bool:
        """Deliver one message, fire one timer or knock a flaky peer out; False when idle."""
        choice = self.rng.random()
        flaky = [p for p in self.peers.values() if p.behaviour == "flaky" and not p.gone]
        if flaky and choice < 0.03:
            peer = flaky[0]
            peer.gone = True
            self.pending = [(p, m) for p, m in self.pending if p != peer.name]
            self.forget(peer.name)
            self.feed(ProviderRemoved(peer=peer.name))
            return True
        # Honest and partial peers answer everything they are asked (a block or "don't
        # have") before the timeout: their timers fire only when nothing else is pending.
        slow = [t for t in self.timers if t[1][0] == "request" and t[1][1] in self.requests
                and self.peers[self.requests[t[1][1]][0]].behaviour not in PROMPT]
        if self.pending and (choice < 0.9 or not slow):
            peer, message = self.pending.pop(self.rng.randrange(len(self.pending)))
            self.now_ms += self.rng.randrange(3)
            self.settle(peer, message)
            if self.lanes and isinstance(message, BlockReply) \
                    and message.cid.matches(message.data):
                self.deliver_through_lane(peer, message)
                return True
            frame = encode_message(message)  # type: ignore[arg-type]
            self.feed(FrameReceived(peer=peer, frame=frame))
            return True
        if self.timers:
            self.timers.sort()
            at_ms, timer = min(slow) if self.pending else self.timers[0]
            self.timers.remove((at_ms, timer))
            self.now_ms = max(self.now_ms, at_ms)
            if timer[0] == "request" and timer[1] in self.requests:
                peer, cids = self.requests.pop(timer[1])
                self.outstanding -= {(peer, c) for c in cids}
            self.feed(TimerFired(timer=timer))
            return True
        return False

    def deliver_through_lane(self, peer: bytes, message: BlockReply) -> None:
        """What a lane sends for a block that hashed right: its file, and a node's bytes."""
        name = f"lane-file-{self.rng.getrandbits(64)}"
        self.lane_files[name] = (message.cid, message.data)
        node = message.data if message.cid.codec == CODEC_DAG_PB else None
        self.feed(BlockVerified(peer=peer, cid=message.cid, size=len(message.data),
                                staged=name, data=node))

    def settle(self, peer: bytes, message: object) -> None:
        if isinstance(message, BlockReply):
            self.outstanding.discard((peer, message.cid))
        elif isinstance(message, DontHave):
            self.outstanding -= {(peer, c) for c in message.cids}


PROMPT = ("honest", "partial")


def make_harness(seed: int, size: int, behaviours: list[str], local_fraction: float,
                 reserve_honest: bool, lanes: bool = False) -> tuple[Harness, bytes, Cid]:
    rng = random.Random(seed)
    data = pattern(size, f"x{seed}")
    root, built = build_bytes(data, chunk_size=64, links_per_node_max=3)
    blocks = {b.cid: b.data for b in built}
    local = {c: d for c, d in blocks.items() if rng.random() < local_fraction}
    peers = {}
    for index, behaviour in enumerate(behaviours):
        has = set(blocks) if behaviour != "partial" else \
            {c for c in blocks if rng.random() < 0.6}
        peers[bytes([index])] = FakePeer(bytes([index]), behaviour, has)
    reserve = [FakePeer(b"reserve", "honest", set(blocks))] if reserve_honest else []
    config = SessionConfig(in_flight_per_peer_max=rng.choice([1, 2, 4]), request_timeout_ms=50,
                           strikes_max=2)
    harness = Harness(blocks, local, peers, reserve, rng, FetchSession(root, config),
                      lanes=lanes)
    return harness, data, root


def run(harness: Harness) -> None:
    for name in harness.peers:
        harness.feed(ProviderAdded(peer=name))
    harness.feed(Start())
    for _ in range(20_000):
        if harness.finished is not None and not harness.pending:
            break
        if not harness.step():
            break


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), size=st.integers(1, 3000),
       behaviours=st.lists(st.sampled_from(BEHAVIOURS), max_size=5),
       local_fraction=st.sampled_from([0.0, 0.3, 1.0]), lanes=st.booleans())
def test_session_completes_despite_arbitrary_peer_failures(seed, size, behaviours,
                                                           local_fraction, lanes) -> None:
    """With ``lanes``, every block that hashes right arrives as a lane's BlockVerified and
    is adopted at most once; the ones not adopted are duplicates, never needed blocks."""
    harness, data, root = make_harness(seed, size, behaviours, local_fraction,
                                       reserve_honest=True, lanes=lanes)
    run(harness)
    assert harness.finished is not None and harness.finished.complete, harness.finished
    assert read_file(root, harness.local.__getitem__) == data
    for peer, drop in harness.dropped.items():
        assert harness.peers[peer].behaviour in ("corrupt", "silent", "liar", "flaky"), drop
        if drop.error is not None:
            assert harness.peers[peer].behaviour == "corrupt"
            assert drop.error.peer == peer
    stats = harness.session.statistics()
    assert stats.blocks_in_flight == 0 and stats.state is SessionState.COMPLETE
    for cid, _data in harness.lane_files.values():  # left for the shell to remove
        assert cid in harness.local


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), behaviours=st.lists(st.sampled_from(BEHAVIOURS), max_size=4))
def test_session_always_ends_even_without_any_honest_provider(seed, behaviours) -> None:
    harness, _, _ = make_harness(seed, 1500, behaviours, 0.0, reserve_honest=False)
    run(harness)
    assert harness.finished is not None
    assert not harness.pending or harness.session.state is not SessionState.ACTIVE


def test_resume_never_refetches_what_the_store_has() -> None:
    harness, data, root = make_harness(7, 3000, ["honest"], 0.0, reserve_honest=False)
    leaves = [c for c in harness.blocks if c.codec == CODEC_RAW]
    harness.local = {c: harness.blocks[c] for c in harness.blocks if c not in leaves[:5]}
    harness.session = FetchSession(root, SessionConfig(request_timeout_ms=10**9))
    asked: list[Cid] = []
    original = harness.apply

    def spy(effect: object) -> None:
        if isinstance(effect, SendWant):
            asked.extend(effect.message.cids)
        original(effect)

    harness.apply = spy  # type: ignore[method-assign]
    run(harness)
    assert harness.finished is not None and harness.finished.complete
    assert set(asked) == set(leaves[:5])  # a timed-out block may be asked again
    assert read_file(root, harness.local.__getitem__) == data


def test_wrong_block_drops_the_peer_and_another_peer_serves_it() -> None:
    data = b"hello world"
    cid = raw_cid(data)
    session = FetchSession(cid)
    session.handle(0, ProviderAdded(peer=b"evil"))
    session.handle(0, ProviderAdded(peer=b"good"))
    effects = session.handle(0, Start())
    assert effects == [ReadLocal(cids=(cid,))]
    effects = session.handle(0, LocalBlocks(missing=(cid,)))
    want = next(e for e in effects if isinstance(e, SendWant))
    bad = BlockReply(request_id=want.message.request_id, cid=cid, data=b"HELLO WORLD")
    effects = session.handle(1, MessageReceived(peer=want.peer, message=bad))
    drop = next(e for e in effects if isinstance(e, DropPeer))
    assert drop.peer == want.peer and drop.error is not None
    assert drop.error.reason.startswith("block does not match")
    retry = next(e for e in effects if isinstance(e, SendWant))
    assert retry.peer != want.peer
    good = BlockReply(request_id=retry.message.request_id, cid=cid, data=data)
    effects = session.handle(2, MessageReceived(peer=retry.peer, message=good))
    assert StoreBlock in {type(e) for e in effects}
    assert effects[-1] == Finished(root=cid, complete=True, reason="complete")


def test_unsolicited_block_and_garbage_frames_drop_the_peer() -> None:
    cid = raw_cid(b"x")
    session = FetchSession(cid)
    session.handle(0, ProviderAdded(peer=b"p"))
    session.handle(0, ProviderAdded(peer=b"q"))
    session.handle(0, Start())
    other = b"not wanted"
    effects = session.handle(0, MessageReceived(
        peer=b"p", message=BlockReply(request_id=0, cid=raw_cid(other), data=other)))
    assert next(e.reason for e in effects if isinstance(e, DropPeer)).startswith("unsolicited")
    effects = session.handle(0, FrameReceived(peer=b"q", frame=b"\xc1garbage"))
    assert [e.peer for e in effects if isinstance(e, DropPeer)] == [b"q"]
    assert session.statistics().peers_dropped == 2


def test_dont_have_moves_the_block_to_another_peer_and_stalls_when_none_is_left() -> None:
    cid = raw_cid(b"x")
    session = FetchSession(cid)
    session.handle(0, ProviderAdded(peer=b"a"))
    session.handle(0, Start())
    effects = session.handle(0, LocalBlocks(missing=(cid,)))
    want = next(e for e in effects if isinstance(e, SendWant))
    effects = session.handle(1, MessageReceived(
        peer=b"a", message=DontHave(request_id=want.message.request_id, cids=(cid,))))
    assert effects == [NeedProviders(root=cid, wanted_count=1)]
    effects = session.handle(2, ProviderAdded(peer=b"b"))
    assert [e.peer for e in effects if isinstance(e, SendWant)] == [b"b"]


def test_bandwidth_limit_defers_requests_until_the_bucket_refills() -> None:
    data = pattern(4 * 64, "bw")
    root, built = build_bytes(data, chunk_size=64, links_per_node_max=4)
    blocks = {b.cid: b.data for b in built}
    config = SessionConfig(peer_rate_bytes_per_s=1000, peer_burst_bytes=100,
                           in_flight_per_peer_max=1)
    session = FetchSession(root, config)
    session.handle(0, ProviderAdded(peer=b"p"))
    session.handle(0, Start())
    effects = session.handle(0, LocalBlocks(missing=(root,)))
    now = 0
    timers = 0
    while session.state is SessionState.ACTIVE:
        wants = [e for e in effects if isinstance(e, SendWant)]
        reads = [e for e in effects if isinstance(e, ReadLocal)]
        wakes = [e for e in effects if isinstance(e, SetTimer) and e.timer[0] == "bandwidth"]
        if reads:
            effects = session.handle(now, LocalBlocks(missing=reads[0].cids))
        elif wants:
            cid = wants[0].message.cids[0]
            effects = session.handle(now, MessageReceived(peer=b"p", message=BlockReply(
                request_id=wants[0].message.request_id, cid=cid, data=blocks[cid])))
        else:
            assert wakes, effects
            assert wakes[0].at_ms > now
            timers += 1
            now = wakes[0].at_ms
            effects = session.handle(now, TimerFired(timer=wakes[0].timer))
    assert session.state is SessionState.COMPLETE
    assert timers >= 1
    total = sum(len(d) for d in blocks.values())
    # 1000 B/s after a 100 B burst; charged on arrival, so the last 64 B leaf is not waited for
    assert now >= total - 100 - 64


def test_token_bucket_arithmetic() -> None:
    bucket = TokenBucket(rate_bytes_per_s=1000, burst_bytes=500)
    assert bucket.ready(0)
    bucket.charge(0, 1500)  # 1000 bytes of debt: one second at 1000 B/s
    assert not bucket.ready(999)
    assert bucket.ready_at_ms(999) == 1000
    assert bucket.ready(1000)
    bucket.charge(1000, 0)
    assert bucket.ready(10**9)


def test_illegal_inputs_raise_a_state_error() -> None:
    session = FetchSession(raw_cid(b"x"))
    with pytest.raises(SessionStateError, match="IDLE"):
        session.handle(0, TimerFired(timer=("request", 0)))
    session.handle(0, Cancel(reason="user"))
    assert session.handle(1, TimerFired(timer=("request", 0))) == []  # late: ignored
    with pytest.raises(SessionStateError):
        session.handle(1, Start())


def test_messages_round_trip_and_decoding_refuses_garbage() -> None:
    cid = raw_cid(b"abc")
    for message in (WantBlocks(request_id=5, cids=(cid,)),
                    BlockReply(request_id=6, cid=cid, data=b"abc"),
                    DontHave(request_id=7, cids=(cid, raw_cid(b"d")))):
        assert decode_message(encode_message(message)) == message
    for frame in (b"", b"\x93\xa4want\x01\x90", b"\x92\xa4want\x01",
                  b"\x93\xa4nope\x01\x90", bytes(3 * 1024 * 1024)):
        with pytest.raises(InvalidMessageError):
            decode_message(frame)
    with pytest.raises(InvalidMessageError):
        WantBlocks(request_id=1, cids=(cid,) * 2)
    with pytest.raises(InvalidMessageError):
        WantBlocks(request_id=-1, cids=(cid,))


@given(st.binary(max_size=200))
def test_decoding_any_bytes_raises_only_the_typed_error(frame: bytes) -> None:
    with contextlib.suppress(InvalidMessageError):
        decode_message(frame)


def test_a_lane_block_is_adopted_once_and_an_unsolicited_one_blames_the_peer() -> None:
    data = b"a block a lane received"
    cid = raw_cid(data)
    session = FetchSession(cid)
    for peer in (b"p", b"q"):
        session.handle(0, ProviderAdded(peer=peer))
    session.handle(0, Start())
    want = next(e for e in session.handle(0, LocalBlocks(missing=(cid,)))
                if isinstance(e, SendWant))
    other = b"q" if want.peer == b"p" else b"p"
    stray = BlockVerified(peer=other, cid=raw_cid(b"y"), size=1, staged="f0", data=None)
    drop = session.handle(1, stray)
    assert [type(e) for e in drop] == [DropPeer] and drop[0].peer == other
    assert drop[0].error is not None and "unsolicited" in drop[0].reason
    verified = BlockVerified(peer=want.peer, cid=cid, size=len(data), staged="f1", data=None)
    effects = session.handle(2, verified)
    assert effects[0] == AdoptBlock(cid=cid, size=len(data), staged="f1")
    assert effects[-1] == Finished(root=cid, complete=True, reason="complete")
    assert session.statistics().bytes_received == len(data)
    assert session.handle(3, verified) == []  # late, after the end: nothing to adopt
