"""prsm_node/net/gossip.py closes py-libp2p 0.8.1's pubsub traps: real hosts on 127.0.0.1
in this process, real TCP + Noise + Yamux between them. Each test names the trap."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.utils import encode_varint_prefixed
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from prsm_node.config import NetworkConfig
from prsm_node.net.gossip import Gossip, GossipSettings
from prsm_node.net.host import build_host
from prsm_node.net.scores import PeerScores

TOPIC = "/test/topic"
SETTINGS = GossipSettings(
    heartbeat_interval_s=0.5,
    degree=6,
    degree_low=4,
    degree_high=12,
    flood_publish=True,
    rate_limit_per_s=10,
    eclipse_protection=True,
    eclipse_distinct_ips_min=3,
    rpc_size_max=1 << 20,
)
DEADLINE_S = 30


@dataclass
class Node:
    host: object
    gossip: Gossip
    scores: PeerScores
    seen: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def nodes(
    count: int, settings: GossipSettings = SETTINGS, *, meshed: bool = True
) -> AsyncIterator[list[Node]]:
    """`count` nodes, each connected to the first; `meshed`: wait until the first has
    each of the others in its mesh (that takes a heartbeat)."""
    network = replace(NetworkConfig(), listen=("/ip4/127.0.0.1/tcp/0",))
    made = []
    for _ in range(count):
        send, _receive = trio.open_memory_channel(256)
        host = build_host(bytes(SigningKey.generate()), network, send)
        scores = PeerScores()
        node = Node(host, Gossip(host, settings=settings, scores=scores, topics=[TOPIC]), scores)
        node.gossip.set_validator(TOPIC, lambda peer, data, node=node: not node.seen.append(data))
        made.append(node)
    async with contextlib.AsyncExitStack() as stack:
        for node in made:
            await stack.enter_async_context(
                node.host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")])
            )
        nursery = await stack.enter_async_context(trio.open_nursery())
        for node in made:
            await nursery.start(node.gossip.run)
        for node in made[1:]:
            await node.host.connect(info_from_p2p_addr(made[0].host.get_addrs()[0]))
            if meshed:
                await made[0].gossip.pubsub.wait_for_mesh(node.host.get_id(), TOPIC, DEADLINE_S)
        yield made
        nursery.cancel_scope.cancel()


async def wait_until(condition: object) -> None:
    with trio.fail_after(DEADLINE_S):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.02)


async def raw_pubsub_stream(sender: Node, target: Node) -> object:
    return await sender.host.new_stream(target.host.get_id(), [PROTOCOL_ID_V11])


async def test_a_garbage_rpc_frame_is_scored_and_the_node_keeps_gossiping() -> None:
    async with nodes(2) as (target, other):
        stream = await raw_pubsub_stream(other, target)
        await stream.write(encode_varint_prefixed(b"\xff\xff\xff\xff\x0f not protobuf"))
        await wait_until(lambda: target.scores.statistics().rejected_total == 1)
        assert target.gossip.statistics()["faults"] == 1
        await target.gossip.publish(TOPIC, b"still alive")
        await wait_until(lambda: b"still alive" in target.seen)


async def test_a_message_with_a_garbage_key_is_scored_not_fatal() -> None:
    async with nodes(2) as (target, other):
        stream = await raw_pubsub_stream(other, target)
        subscribe = rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=TOPIC)])
        await stream.write(encode_varint_prefixed(subscribe.SerializeToString()))
        hashed_peer = b"\x12\x20" + hashlib.sha256(b"not an ed25519 key").digest()
        message = rpc_pb2.Message(
            data=b"x", topicIDs=[TOPIC], from_id=hashed_peer, seqno=bytes(8),
            signature=bytes(64), key=b"garbage key",
        )
        publish = rpc_pb2.RPC(publish=[message])
        await stream.write(encode_varint_prefixed(publish.SerializeToString()))
        await wait_until(lambda: target.scores.statistics().rejected_total == 1)
        assert target.seen == []
        await other.gossip.publish(TOPIC, b"honest")
        await wait_until(lambda: b"honest" in target.seen)


async def test_our_own_burst_is_all_forwarded_past_rate_limit_and_queue_size() -> None:
    async with nodes(2) as (publisher, receiver):
        burst = [b"message %d" % index for index in range(100)]  # > 10/s, > 32 queued
        for data in burst:
            await publisher.gossip.publish(TOPIC, data)
        await wait_until(lambda: set(burst) <= set(receiver.seen))


async def test_eclipse_protection_sees_the_peers_ip_addresses() -> None:
    async with nodes(2) as (first, second):
        scorer = first.gossip.router.scorer
        assert scorer is not None
        await wait_until(lambda: second.host.get_id() in scorer.ip_by_peer)
        assert scorer.ip_by_peer[second.host.get_id()] == "127.0.0.1"


async def test_the_heartbeat_is_not_adapted_away() -> None:
    async with nodes(1) as (node,):
        assert node.gossip.router.adaptive_gossip_enabled is False
        assert node.gossip.router.heartbeat_interval == SETTINGS.heartbeat_interval_s


async def test_our_refused_publishes_do_not_gate_our_later_ones() -> None:
    async with nodes(2) as (publisher, receiver):
        refused = [0]

        def refuse_first(peer: str, data: bytes) -> bool:
            if data.startswith(b"refused") and refused[0] < 150:
                refused[0] += 1
                return False
            publisher.seen.append(data)
            return True

        publisher.gossip.set_validator(TOPIC, refuse_first)
        for index in range(150):  # more than the publish threshold's worth of refusals
            await publisher.gossip.publish(TOPIC, b"refused %d" % index)
        await publisher.gossip.publish(TOPIC, b"accepted")
        await wait_until(lambda: b"accepted" in receiver.seen)
        assert b"accepted" in publisher.seen


async def test_a_peer_relaying_many_refused_messages_is_ignored_before_validation() -> None:
    async with nodes(2) as (flooder, receiver):  # the first one waited for its mesh
        judged = [0]

        def refuse_stale(peer: str, data: bytes) -> bool:
            judged[0] += 1
            return not data.startswith(b"stale")

        receiver.gossip.set_validator(TOPIC, refuse_stale)
        for index in range(300):  # stale, not forged: no PeerScores penalty, only P4
            await flooder.gossip.publish(TOPIC, b"stale %d" % index)
        await wait_until(lambda: judged[0] >= 100)
        with trio.move_on_after(2):
            await wait_until(lambda: judged[0] >= 300)
        assert judged[0] < 300  # past the publish threshold the rest were dropped unjudged
        assert receiver.scores.statistics().rejected_total == 0


async def test_our_own_message_reaches_subscribed_peers_outside_the_mesh() -> None:
    # One heartbeat, at start before anyone connects, so nothing repairs the mesh we empty
    # below (as lost connections empty it between heartbeats): only flood publishing can
    # carry the message now; without it the message would wait for IHAVE gossip.
    settings = replace(SETTINGS, heartbeat_interval_s=3600.0)
    async with nodes(4, settings, meshed=False) as (publisher, *others):
        router = publisher.gossip.router
        ids = {other.host.get_id() for other in others}
        await wait_until(
            lambda: ids <= set(publisher.gossip.pubsub.peer_topics.get(TOPIC, ()))
            and ids <= set(router.peer_protocol)
        )
        router.mesh[TOPIC] = set()
        await publisher.gossip.publish(TOPIC, b"flooded")
        await wait_until(lambda: all(b"flooded" in other.seen for other in others))
        assert publisher.gossip.statistics()["flood_published"] == 1


async def test_a_peer_we_prune_from_the_mesh_is_backed_off_on_our_side_too() -> None:
    settings = replace(SETTINGS, degree=1, degree_low=1, degree_high=1, heartbeat_interval_s=0.2)
    async with nodes(4, settings, meshed=False) as (hub, *spokes):
        router = hub.gossip.router
        # Each spoke grafts the hub (its only peer); D_high is 1, so the hub prunes two of
        # them, which then back off for 60 s and graft no more.
        await wait_until(lambda: router.pruned >= 2)
        pruned = [spoke.host.get_id() for spoke in spokes
                  if spoke.host.get_id() not in router.mesh.get(TOPIC, ())]
        assert len(pruned) == 2
        assert all(router._check_back_off(peer, TOPIC) for peer in pruned)
