"""GossipSub for the node: py-libp2p 0.8.1's Pubsub and GossipSub, with their traps closed.

What 0.8.1 does out of the box (each checked on loopback; tests/registry/test_gossip.py
keeps the fixes honest):
1. A malformed protobuf frame on a /meshsub stream raises DecodeError out of
   `Pubsub.stream_handler`, through the swarm, and the host stops: any peer can kill a
   node with a few bytes. `stream_handler` here catches it, resets the stream and scores
   the peer down.
2. A message whose `from_id` is not an identity (Ed25519) peer id and whose `key` field is
   garbage makes the library's signature check raise inside `push_msg`; that stops the
   Pubsub service and the node with it. `push_msg` here refuses a message from anything but
   an Ed25519 peer id before the library reads it, and catches what the library raises.
3. A synchronous topic validator that raises stops the service the same way: validators
   given to `Gossip` must not raise (the adapter does not catch our own bugs).
4. The spam limit (`max_messages_per_topic_per_second`, default 10) also counts our own
   publishes: the 11th message we publish within a second is delivered locally and
   silently never forwarded. Our own publishes are exempt here; peers are still limited.
5. `adaptive_gossip_enabled` (default on) recomputes a "network health" every 30 s; with the
   default score parameters every peer scores 0, health stays below 0.7, and the heartbeat
   becomes max(60 s, 0.75 x the base): a 1 s heartbeat turns into 60 s. It is off here.
6. Eclipse protection reads the peer IP that `add_peer` records only when the pubsub stream
   is already registered, which it never is at that point: the IP table stays empty and
   the protection does nothing. `add_peer` here records the connection's remote IP.
7. The heartbeat defaults to 120 s; it comes from the config here (about 1 s).
8. A subscription channel holds 32 messages and drops the rest with a warning. Acceptance
   happens in the validator (it runs before that channel), and the channel is drained.
9. `Pubsub.__init__` registers the /meshsub stream handler at once, but the handler needs
   the service's manager, which exists only once the service runs: a peer that opens its
   pubsub stream in between raises AttributeError in the swarm, and the host stops. The
   handler here waits until the service runs.
10. Pubsub registers a peer once, when the connection opens; if opening its stream fails
   with anything but SwarmException/StreamClosed (a negotiation timeout on a connection
   that a simultaneous dial is closing, say: seen hundreds of times with 30 nodes on 2
   cores), it gives up and the peer is never meshed while that connection lives. A task
   here re-registers every connected peer pubsub lacks, each upkeep interval.
11. Each peer's outbound RPC queue holds 32 RPCs (go-libp2p-pubsub's size) and drops the
   rest silently (a debug log line): 300 messages published in a loop reached a peer as
   32. `publish` here waits while any queue is half full. A relay forwarding faster than
   a peer drains still drops, as go-libp2p does; the registry's sync repairs that.

Flood publishing (GossipSub v1.1, go-libp2p's `WithFloodPublish`, on by default there):
0.8.1 sends a message we publish to our mesh for the topic only. The mesh is rebuilt at
heartbeats; a publish that finds it empty or thin (peers just pruned, a connection just
lost) reaches the rest only by IHAVE gossip at a later heartbeat and an IWANT round trip:
seconds, on a loaded machine. With `flood_publish` our own messages go to every peer
subscribed to the topic whose score is at or above `publish_threshold`; relayed messages
still go to the mesh only, so the cost is one copy per subscribed peer per message we
originate (registry traffic is a few messages a minute per node).

12. A node that PRUNEs a peer from its mesh at a heartbeat (mesh over D_high) records no
   backoff for it, although the PRUNE tells the peer to back off for `prune_back_off`
   (60 s). The pruner can then GRAFT the same peer again at its next heartbeats; the
   peer, still backing off, answers each such GRAFT with a PRUNE (and, within 10 s of
   the first, a GRAFT-flood penalty) and restarts its backoff. go-libp2p-pubsub records
   the backoff on both sides (`makePrune` calls `doAddBackoff`). Seen on the 30-node
   devnet: the bootstrap node, which every node grafts first and which prunes most of
   them, was left with 0-1 mesh peers per topic for minutes while the others had 2-10,
   and without flood publishing it got every message only through the registry's sync
   (10 s rounds) and its own announcements reached nobody by gossip. Here the pruner
   records the backoff too; in the same benchmark run after it, the bootstrap node was
   as well served as any other (BENCHMARKS.md, registry, session 4).

Signing: pubsub-level strict signing stays on (every pubsub message is signed by its
origin's host key and checked). Message ids are (origin, seqno) and the library caches a
"validation failed" verdict by id for 300 s, so without it any peer could send a junk
message under another node's next id first and censor the real one. What the registry
trusts is its own signed body inside the data, verified regardless.

Scoring: a validator's "reject" feeds the library's P4 counter (weight 1, decaying 10% per
heartbeat). Below `publish_threshold` a peer's messages are ignored before validation;
that gates floods of merely stale or duplicate messages, which an honest relay can send
now and then and which therefore do not count against `PeerScores`. Faults (malformed,
forged) go to `PeerScores`, which disconnects and bans at its floor.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import OutBoundQueueSize
from libp2p.pubsub.score import PeerScorer, ScoreParams, TopicScoreParams
from libp2p.tools.anyio_service import background_trio_service

from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import STREAM_FAILURES

log = structlog.get_logger(__name__)

Validator = Callable[[str, bytes], bool]
"""(peer id that handed us the message, its data) -> accept. Must not raise (rule 3)."""

SCORE_PARAMS = ScoreParams(
    p4_invalid_messages=TopicScoreParams(weight=1.0, cap=10_000.0, decay=0.9),
    publish_threshold=-100.0,
    gossip_threshold=-50.0,
    graylist_threshold=-200.0,
)
"""A peer relaying more than ~10 rejected messages a second for long is ignored until its
score decays back (at 10% per heartbeat a steady rate r settles at -10 r)."""


UPKEEP_INTERVAL_S_MIN = 1.0
REGISTRATIONS_CONCURRENT_MAX = 8
REGISTRATION_TIMEOUT_S = 10.0
RETRY_DELAY_S_MAX = 30.0
QUEUE_HIGH = OutBoundQueueSize // 2
BACKPRESSURE_S = 1.0
BACKPRESSURE_POLL_S = 0.005
SCORES_LISTED_MAX = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipSettings:
    heartbeat_interval_s: float
    degree: int
    degree_low: int
    degree_high: int
    flood_publish: bool
    rate_limit_per_s: int  # 0: off
    eclipse_protection: bool
    eclipse_distinct_ips_min: int
    rpc_size_max: int


class _Scorer(PeerScorer):
    """The library's scorer, blind to our own peer id: a publish of ours that our validator
    refuses (a stale or over-cap entry) would otherwise count as an invalid message from
    us, and past `publish_threshold` the library would drop every later publish of ours
    before it is even validated."""

    def __init__(self, params: ScoreParams, own: ID) -> None:
        super().__init__(params)
        self._own = own

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if peer != self._own:
            super().on_invalid_message(peer, topic)

    def allow_publish(self, peer: ID, topics: list[str]) -> bool:
        return peer == self._own or super().allow_publish(peer, topics)


def _from_ed25519_peer(msg: Any) -> bool:
    return isinstance(ID(msg.from_id).extract_public_key(), Ed25519PublicKey)


class _GossipSub(GossipSub):
    """GossipSub with rules 4, 6 and 12 fixed, flood publishing, counting its heartbeats."""

    heartbeats = 0
    flood_publish = False
    flood_published = 0
    pruned = 0

    def _get_peers_to_send(
        self, topic_ids: Iterable[str], msg_forwarder: ID, origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterator[ID]:
        """The library's choice (mesh, fanout, direct, less IDONTWANT), plus, for a message
        we originate, every other peer subscribed to its topics (see "Flood publishing")."""
        topics = list(topic_ids)
        chosen = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        assert self.pubsub is not None
        own = self.pubsub.my_id
        if self.flood_publish and msg_forwarder == own and origin == own:
            for topic in topics:
                for peer in self.pubsub.peer_topics.get(topic, ()):
                    if peer != own and peer in self.peer_protocol:
                        chosen.add(peer)  # the publish loop applies allow_publish
            self.flood_published += 1
        yield from chosen

    def fanout_heartbeat(self) -> None:
        """Called once per heartbeat, after the mesh upkeep and before the message cache
        shifts (which forgets what is older than `gossip_history` heartbeats)."""
        self.heartbeats += 1
        super().fanout_heartbeat()

    def mesh_heartbeat(self) -> tuple[Any, Any]:
        """Rule 12: back off, on our side too, from every peer we prune."""
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        self.pruned += sum(len(topics) for topics in peers_to_prune.values())
        return peers_to_graft, peers_to_prune

    def _check_spam_protection(self, peer_id: ID, msg: Any) -> bool:
        if self.pubsub is not None and peer_id == self.pubsub.my_id:
            return True
        return super()._check_spam_protection(peer_id, msg)

    def add_peer(self, peer_id: ID, protocol_id: Any) -> None:
        super().add_peer(peer_id, protocol_id)
        if self.eclipse_protection_enabled and self.scorer is not None:
            ip = self._remote_ip(peer_id)
            if ip is not None:
                self.scorer.add_peer_ip(peer_id, ip)

    def _remote_ip(self, peer_id: ID) -> str | None:
        assert self.pubsub is not None
        for connection in self.pubsub.host.get_network().get_connections(peer_id):
            for address in connection.get_transport_addresses():
                parts = str(address).split("/")
                for name in ("ip4", "ip6"):
                    if name in parts and parts.index(name) + 1 < len(parts):
                        return parts[parts.index(name) + 1]
        return None


class _Pubsub(Pubsub):
    """Pubsub with rules 1 and 2 fixed; faults are reported to `on_fault`."""

    def __init__(self, *args: Any, on_fault: Callable[[ID, str], None],
                 is_banned: Callable[[ID], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_fault = on_fault
        self._is_banned = is_banned
        self._running = trio.Event()
        self.dropped_from_banned = 0

    async def run(self) -> None:
        self._running.set()
        await super().run()

    async def stream_handler(self, stream: Any) -> None:
        # Rule 9: the handler is registered when Pubsub is built, before its service runs.
        await self._running.wait()
        peer = stream.muxed_conn.peer_id
        try:
            await super().stream_handler(stream)
        except STREAM_FAILURES:
            pass
        except Exception as error:  # protobuf DecodeError and others on hostile bytes (rule 1)
            self._on_fault(peer, f"pubsub: unreadable RPC ({type(error).__name__})")
            with contextlib.suppress(*STREAM_FAILURES):
                await stream.reset()
            self._handle_dead_peer(peer)

    async def push_msg(self, msg_forwarder: ID, msg: Any) -> None:
        if msg_forwarder != self.my_id:
            if self._is_banned(msg_forwarder):
                self.dropped_from_banned += 1
                return
            if not _from_ed25519_peer(msg):
                self._on_fault(msg_forwarder, "pubsub: message origin is not an Ed25519 peer")
                return
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as error:  # the library's checks raise on hostile fields (rule 2)
            if msg_forwarder == self.my_id:
                raise  # our own publish failing is our bug
            self._on_fault(msg_forwarder, f"pubsub: message broke a check ({type(error).__name__})")


class Gossip:
    """The node's Pubsub + GossipSub: validators per topic, publishing, drained topics."""

    def __init__(
        self, host: Any, *, settings: GossipSettings, scores: PeerScores, topics: list[str]
    ) -> None:
        self._scores = scores
        self._topics = list(topics)
        self.router = _GossipSub(
            [PROTOCOL_ID_V11, PROTOCOL_ID],
            degree=settings.degree,
            degree_low=settings.degree_low,
            degree_high=settings.degree_high,
            heartbeat_interval=settings.heartbeat_interval_s,  # type: ignore[arg-type]
            score_params=SCORE_PARAMS,
            adaptive_gossip_enabled=False,  # rule 5
            spam_protection_enabled=settings.rate_limit_per_s > 0,
            max_messages_per_topic_per_second=float(settings.rate_limit_per_s),
            eclipse_protection_enabled=settings.eclipse_protection,
            min_mesh_diversity_ips=settings.eclipse_distinct_ips_min,
        )
        self.router.scorer = _Scorer(SCORE_PARAMS, host.get_id())
        self.router.flood_publish = settings.flood_publish
        # Built before the host accepts connections: Pubsub learns of peers from a network
        # notifee, and a connection made before it is registered would never be meshed.
        self.pubsub = _Pubsub(
            host,
            self.router,
            strict_signing=True,
            max_inbound_rpc_size=settings.rpc_size_max,
            allowed_topics=set(self._topics),
            on_fault=self._fault,
            is_banned=lambda peer: scores.is_banned(peer.to_base58()),
        )
        self._host = host
        self._upkeep_interval_s = max(UPKEEP_INTERVAL_S_MIN, 2 * settings.heartbeat_interval_s)
        self._registering: set[ID] = set()
        self._retry_at: dict[ID, tuple[float, float]] = {}  # peer -> (when, last delay)
        self.delivered: Counter[str] = Counter()
        self.faults = 0
        self.reregistered = 0

    def set_validator(self, topic: str, validator: Validator) -> None:
        assert topic in self._topics

        def check(forwarder: ID, msg: Any) -> bool:
            return validator(forwarder.to_base58(), msg.data)

        self.pubsub.set_topic_validator(topic, check, False)

    def _fault(self, peer: ID, reason: str) -> None:
        self.faults += 1
        self._scores.penalise(peer.to_base58(), reason)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.pubsub), background_trio_service(self.router):
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                for topic in self._topics:
                    subscription = await self.pubsub.subscribe(topic)
                    nursery.start_soon(self._drain, topic, subscription)
                nursery.start_soon(self._keep_peers_registered, nursery)
                task_status.started()

    async def _keep_peers_registered(self, nursery: trio.Nursery) -> None:
        """Rule 10: register with pubsub every connected peer it lost or never got; a peer
        that keeps failing is retried with a doubling delay (at most RETRY_DELAY_S_MAX)."""
        while True:
            await trio.sleep(self._upkeep_interval_s)
            connected = self._host.get_network().get_connections_map()
            for peer in [peer for peer in self._retry_at if peer not in connected]:
                del self._retry_at[peer]  # bounded by the connected peers
            now = trio.current_time()
            for peer in connected:
                if len(self._registering) >= REGISTRATIONS_CONCURRENT_MAX:
                    break
                if peer in self.pubsub.peers or peer in self._registering:
                    continue
                if self._retry_at.get(peer, (0.0, 0.0))[0] > now:
                    continue
                if self._scores.is_banned(peer.to_base58()):
                    continue
                self._registering.add(peer)
                nursery.start_soon(self._register, peer)

    async def _register(self, peer: ID) -> None:
        try:
            registered = await self.pubsub.ensure_peer_stream(peer, REGISTRATION_TIMEOUT_S)
        except Exception as error:  # libp2p raises many unrelated types for a failed open
            log.debug("gossip.register_failed", peer=peer.to_base58(), error=repr(error))
            registered = False
        finally:
            self._registering.discard(peer)
        if registered:
            self.reregistered += 1
            self._retry_at.pop(peer, None)
            return
        delay = min(RETRY_DELAY_S_MAX, 2 * self._retry_at.get(peer, (0.0, 1.0))[1])
        self._retry_at[peer] = (trio.current_time() + delay, delay)

    async def _drain(self, topic: str, subscription: Any) -> None:
        """Rule 8: accepted messages were handled by the validator; count and drop."""
        async for _ in subscription:
            self.delivered[topic] += 1

    async def publish(self, topic: str, data: bytes) -> None:
        """Publish, then wait (at most BACKPRESSURE_S) while a peer's outbound queue is half
        full (rule 11): a burst of our own messages must not overflow it."""
        await self.pubsub.publish(topic, data)
        with trio.move_on_after(BACKPRESSURE_S):
            while any(len(queue) >= QUEUE_HIGH for queue in self.pubsub.peer_queues.values()):
                await trio.sleep(BACKPRESSURE_POLL_S)

    def statistics(self) -> dict[str, Any]:
        return {
            "peers": len(self.pubsub.peers),
            "heartbeats": self.router.heartbeats,
            "flood_published": self.router.flood_published,
            "pruned": self.router.pruned,
            "mesh": {topic: len(self.router.mesh.get(topic, ())) for topic in self._topics},
            "delivered": dict(self.delivered),
            "faults": self.faults,
            "dropped_from_banned": self.pubsub.dropped_from_banned,
            "reregistered": self.reregistered,
            "peer_scores": self._score_summary(),
        }

    def _score_summary(self) -> dict[str, Any]:
        """How our pubsub peers score with us: a peer under `gossip_threshold` gets no
        messages from us, under `publish_threshold` its messages are dropped unread."""
        scorer = self.router.scorer
        assert scorer is not None
        scores = {peer: scorer.score(peer, self._topics) for peer in self.pubsub.peers}
        lowest = sorted(scores.items(), key=lambda item: item[1])[:SCORES_LISTED_MAX]
        return {
            "below_gossip_threshold": sum(s < SCORE_PARAMS.gossip_threshold
                                          for s in scores.values()),
            "below_publish_threshold": sum(s < SCORE_PARAMS.publish_threshold
                                           for s in scores.values()),
            "lowest": {peer.to_base58(): round(score, 1) for peer, score in lowest},
        }
