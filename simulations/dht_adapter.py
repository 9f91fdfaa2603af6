"""Plugs ``dht.node.DhtNode`` into the general simulator (``simulations/sim.py``).

Rules:
1. This file is the only DHT-specific glue: it maps the node's effects to simulator calls
   (``send``, ``set_timer``, ``persist``, ``output``) and back.
2. A simulated peer's address is ``sim://<address>``; that is how a ``PeerInfo`` learnt
   from the DHT maps back to a simulator address, exactly as a multiaddr would be dialled.
3. ``wire=True`` sends encoded frames (``FrameReceived``: the real codec, with its checks
   and costs); ``wire=False`` passes message objects (``MessageReceived``), which is faster
   and exercises the same node logic. Snapshots always go through msgpack so a persisted
   table is proven to be plain data.
"""

from __future__ import annotations

from typing import Any

import msgpack

from dht.messages import encode_message
from dht.node import DhtNode
from dht.node_effects import (
    CommandFinished,
    DropPeer,
    FrameReceived,
    MessageReceived,
    PersistTable,
    SendRequest,
    SendResponse,
    SetTimer,
    TimerFired,
)
from dht.peer import PeerInfo
from simulations.sim import Address, Simulator

ADDRESS_PREFIX = "sim://"


def sim_addr(address: Address) -> str:
    return f"{ADDRESS_PREFIX}{address}"


class DhtSimAdapter:
    """``CoreAdapter`` for DhtNode cores."""

    __slots__ = ("_addresses", "_own", "wire")

    def __init__(self, *, wire: bool = False) -> None:
        self.wire = wire
        self._addresses: dict[str, Address] = {}
        self._own: dict[Address, PeerInfo] = {}  # an address keeps its peer id for life

    def address_of(self, peer: PeerInfo) -> Address | None:
        if not peer.addrs:
            return None
        text = peer.addrs[0]
        address = self._addresses.get(text)
        if address is None and text.startswith(ADDRESS_PREFIX):
            address = self._addresses[text] = int(text[len(ADDRESS_PREFIX):])
        return address

    def apply(self, sim: Simulator, address: Address, effects: list[Any]) -> None:
        own: PeerInfo | None = None
        for effect in effects:
            kind = type(effect)
            if kind is SendRequest or kind is SendResponse:
                destination = self.address_of(effect.peer)
                if destination is None:
                    continue
                if own is None:
                    own = self._own.get(address)
                    if own is None:
                        core = sim.core(address)
                        assert isinstance(core, DhtNode)
                        own = self._own[address] = core.own
                message = encode_message(effect.message) if self.wire else effect.message
                sim.send(address, destination, (own, message))
            elif kind is SetTimer:
                sim.set_timer(address, effect.timer, effect.at_ms)
            elif kind is PersistTable:
                sim.persist(address, msgpack.unpackb(
                    msgpack.packb(effect.snapshot, use_bin_type=True), raw=False))
            elif kind is CommandFinished or kind is DropPeer:
                sim.output(address, effect)
            else:
                raise TypeError(f"unknown DHT effect {kind.__name__}")

    def message_input(self, source: Address, payload: Any) -> Any:
        peer, message = payload
        if self.wire:
            return FrameReceived(peer=peer, frame=message)
        return MessageReceived(peer=peer, message=message)

    def timer_input(self, key: Any) -> Any:
        return TimerFired(timer=key)
