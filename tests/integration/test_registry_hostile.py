"""A peer that floods the registry topics with invalid and forged messages is scored down
and cut off by every node, and no registry holds anything from it.

The hostile peer is a real py-libp2p host in this test process running the library's own
Pubsub + GossipSub (no validators of ours, spam limit off), meshed with three real node
processes over TCP on 127.0.0.1. It also sends a frame that is not protobuf at all and a
message with a garbage key, each of which stops a stock py-libp2p 0.8.1 node."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import msgpack
import pytest
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils import encode_varint_prefixed
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from consensus.codec import Ed25519Signer, canonical, sign_bytes
from prsm_node.devnet import Devnet
from prsm_node.dht_service import unix_ms
from prsm_node.identity import read_seed
from prsm_node.net.host import build_host
from prsm_node.registry.messages import Kind, peer_id_of, sign_entry

from .conftest import TEST_NETWORK

pytestmark = pytest.mark.multiprocess

NODES = 3
CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
DEADLINE_S = 60


def model_body(signer: Ed25519Signer, **changes: Any) -> dict[str, Any]:
    now = unix_ms()
    return {
        "kind": "model", "key": CID, "seq": now, "issued_at_ms": now,
        "expires_at_ms": now + 3_600_000, "peer_id": peer_id_of(signer.public_key),
        "name": "evil", "architecture": "x", "tags": [], "manifest_cid": CID,
        "size_bytes": 1, "description": "",
    } | changes


def wire(body: dict[str, Any], signer: Ed25519Signer, domain: bytes = Kind.MODEL.domain,
         sig: bytes | None = None) -> bytes:
    signature = sign_bytes(signer, domain, canonical(body)) if sig is None else sig
    return canonical({"body": body, "signer": signer.public_key, "sig": signature})


def hostile_messages(attacker: Ed25519Signer, victim: Ed25519Signer) -> list[tuple[str, bytes]]:
    """(topic, data): each one is refused as a fault, none can be stored."""
    model, capability = Kind.MODEL.topic, Kind.CAPABILITY.topic
    now = unix_ms()
    return [
        (model, b"\xc1 not msgpack"),
        (model, wire(model_body(attacker), attacker, sig=b"")),  # unsigned
        (model, wire(model_body(victim), attacker)),  # claims the victim's key
        (model, wire(model_body(victim), victim, sig=bytes(64))),  # forged signature
        (model, wire(model_body(attacker), attacker, domain=b"prsm/tx/1")),  # wrong domain
        (model, wire(model_body(attacker, description="x" * 20_000), attacker)),  # oversized
        (capability, wire(model_body(attacker), attacker)),  # a model on the wrong topic
        (model, wire(model_body(attacker, issued_at_ms=now + 3_600_000,
                                expires_at_ms=now + 7_200_000), attacker)),  # from the future
        (model, wire(model_body(attacker, peer_id=peer_id_of(victim.public_key)), attacker)),
        (model, wire(model_body(attacker, extra=1), attacker)),  # outside the schema
        (model, msgpack.packb({"body": model_body(attacker, size_bytes=1.5),  # a float
                               "signer": attacker.public_key, "sig": bytes(64)})),
    ]


@contextlib.asynccontextmanager
async def hostile_peer(devnet: Devnet, key: SigningKey) -> AsyncIterator[tuple[Any, Pubsub]]:
    """The library's own pubsub on a host of ours, meshed with every node on the topics."""
    send, _receive = trio.open_memory_channel(256)
    host = build_host(bytes(key), replace(TEST_NETWORK, listen=("/ip4/127.0.0.1/tcp/0",)), send)
    router = GossipSub([PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4, degree_high=12,
                       heartbeat_interval=1, adaptive_gossip_enabled=False,  # type: ignore[arg-type]
                       spam_protection_enabled=False)
    pubsub = Pubsub(host, router)
    async with host.run(listen_addrs=[Multiaddr("/ip4/127.0.0.1/tcp/0")]), \
            background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        for kind in (Kind.MODEL, Kind.CAPABILITY):
            await pubsub.subscribe(kind.topic)
        for node in devnet.nodes:
            info = info_from_p2p_addr(Multiaddr(node.address))
            await host.connect(info)
            await pubsub.wait_for_mesh(info.peer_id, Kind.MODEL.topic, DEADLINE_S)
        yield host, pubsub


async def call(devnet: Devnet, index: int, method: str, params: Any = None) -> Any:
    return await trio.to_thread.run_sync(devnet.call, index, method, params)


async def wait_all(devnet: Devnet, condition: Callable[[int], Any]) -> None:
    with trio.fail_after(DEADLINE_S):
        for index in range(NODES):
            while not await condition(index):
                await trio.sleep(0.05)


async def test_a_flooding_peer_is_cut_off_and_nothing_it_sent_is_kept(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = await trio.to_thread.run_sync(lambda: make_devnet(NODES, validators=1))
    victim = Ed25519Signer.from_seed(read_seed(devnet.nodes[0].data_dir / "node.key"))
    key = SigningKey.generate()
    attacker = Ed25519Signer(key)
    async with hostile_peer(devnet, key) as (host, pubsub):
        for topic, data in hostile_messages(attacker, victim):
            await pubsub.publish(topic, data)
        for _ in range(40):  # keep flooding: the nodes must drop it at their score floor
            await pubsub.publish(Kind.MODEL.topic, b"\xc1 flood")
            if not host.get_network().get_connections_map():
                break
            await trio.sleep(0.02)

        async def banned(index: int) -> bool:
            scores = (await call(devnet, index, "node_statistics"))["scores"]
            return scores["peers_banned"] == 1

        await wait_all(devnet, banned)
        with trio.fail_after(DEADLINE_S):
            while host.get_network().get_connections_map():
                await trio.sleep(0.05)
        valid = sign_entry(Kind.MODEL, model_body(attacker), attacker)
        with contextlib.suppress(Exception):  # it has no peers left to publish to
            await pubsub.publish(Kind.MODEL.topic, valid.wire)

    for index in range(NODES):
        registry = await call(devnet, index, "registry_statistics")
        counters = registry["counters"]
        for reason in ("malformed", "forged", "oversized", "wrong_topic", "from_future"):
            assert counters.get(f"rejected_{reason}", 0) >= 1, (index, reason, counters)
        assert (await call(devnet, index, "registry_models"))["models"] == []
        nodes = (await call(devnet, index, "registry_nodes"))["nodes"]
        assert attacker.public_key.hex() not in {node["signer"] for node in nodes}

    honest = {"name": "honest", "architecture": "cnn", "manifest_cid": CID}
    await call(devnet, 1, "registry_announce_model", honest)

    async def has_honest(index: int) -> bool:
        models = (await call(devnet, index, "registry_models"))["models"]
        return [model["name"] for model in models] == ["honest"]

    await wait_all(devnet, has_honest)


async def test_unreadable_pubsub_frames_do_not_stop_a_node(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = await trio.to_thread.run_sync(lambda: make_devnet(1, validators=1))
    async with hostile_peer(devnet, SigningKey.generate()) as (host, _pubsub):
        target = info_from_p2p_addr(Multiaddr(devnet.nodes[0].address)).peer_id
        stream = await host.new_stream(target, [PROTOCOL_ID_V11])
        hashed_peer = b"\x12\x20" + hashlib.sha256(b"an RSA-style peer id").digest()
        message = rpc_pb2.Message(data=b"x", topicIDs=[Kind.MODEL.topic], from_id=hashed_peer,
                                  seqno=bytes(8), signature=bytes(64), key=b"garbage key")
        publish = rpc_pb2.RPC(publish=[message])
        await stream.write(encode_varint_prefixed(publish.SerializeToString()))
        other = await host.new_stream(target, [PROTOCOL_ID_V11])
        await other.write(encode_varint_prefixed(b"\xff\xff\xff\xff\x0f not protobuf"))

        async def both_counted(index: int) -> bool:
            registry = await call(devnet, index, "registry_statistics")
            return registry["gossip"]["faults"] >= 2

        with trio.fail_after(DEADLINE_S):
            while not await both_counted(0):
                await trio.sleep(0.05)
    assert devnet.exited() == {}
    info = await call(devnet, 0, "node_info")
    assert info["peer_id"] == devnet.nodes[0].peer_id
    await call(devnet, 0, "registry_announce_model",
               {"name": "alive", "architecture": "cnn", "manifest_cid": CID})
