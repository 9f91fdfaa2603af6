"""Plugs ``consensus.replica.Replica`` into the general simulator (``simulations/sim.py``).

Rules:
1. This file is the only PBFT-specific glue: it maps the replica's effects to simulator
   calls (``send``, ``set_timer``, ``persist``, ``output``) and back. Addresses are replica
   indices (0..n-1).
2. The simulated disk (``SimDisk``) is an in-memory copy of exactly what the replica asked
   to persist, updated in effect order, so a crash at any event boundary leaves on "disk"
   what a real store would hold, and a restart (``SimDisk.recovered``) rebuilds the
   replica from it alone. Ledger states are immutable, so keeping the object is a copy.
3. ``wire=True`` round-trips every message through the real codec (``encode_frame`` /
   ``decode_frame``): slower, and proves the messages are plain data.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from consensus.ledger import Block, LedgerState
from consensus.messages import Signed, decode_frame, encode_frame
from consensus.replica_effects import (
    Broadcast,
    MessageReceived,
    PersistBlock,
    PersistCheckpoint,
    PersistSlot,
    PersistView,
    Recovered,
    Send,
    SetTimer,
    SlotRecord,
    TimerFired,
)
from simulations.sim import Address, Simulator

RECENT_BLOCKS_MAX = 256


class SimDisk:
    """What one replica persisted (the simulator's stand-in for ``LedgerStore``)."""

    __slots__ = ("in_view_change", "last_certificate", "ledger", "recent", "slots",
                 "stable", "view", "writes")

    def __init__(self) -> None:
        self.view = 0
        self.in_view_change = False
        self.slots: dict[int, SlotRecord] = {}
        self.stable: tuple[int, Block | None, tuple[Signed, ...], LedgerState | None] = (
            0, None, (), None)
        self.ledger: LedgerState | None = None
        self.last_certificate: tuple[Signed, ...] = ()
        self.recent: OrderedDict[int, tuple[Block, tuple[Signed, ...]]] = OrderedDict()
        self.writes = 0

    def write(self, effect: Any) -> None:
        self.writes += 1
        kind = type(effect)
        if kind is PersistView:
            self.view, self.in_view_change = effect.view, effect.in_view_change
        elif kind is PersistSlot:
            self.slots[effect.record.seq] = effect.record
        elif kind is PersistBlock:
            self.ledger = effect.state
            self.last_certificate = effect.certificate
            self.recent[effect.block.height] = (effect.block, effect.certificate)
            while len(self.recent) > RECENT_BLOCKS_MAX:
                self.recent.popitem(last=False)
        else:
            assert kind is PersistCheckpoint
            self.stable = (effect.seq, effect.block, effect.proof, effect.state)
            for seq in [s for s in self.slots if s <= effect.seq]:
                del self.slots[seq]

    def recovered(self) -> Recovered | None:
        if self.ledger is None and not self.slots and self.view == 0:
            return None
        seq, block, proof, state = self.stable
        assert self.ledger is not None or seq == 0
        return Recovered(view=self.view, in_view_change=self.in_view_change,
                         ledger=self.ledger, last_certificate=self.last_certificate,
                         stable_seq=seq, stable_block=block, stable_proof=proof,
                         stable_state=state, slots=tuple(self.slots.values()),
                         recent_blocks=tuple(self.recent.values()))


class PbftSimAdapter:
    """``CoreAdapter`` for Replica cores (and Byzantine wrappers around them)."""

    __slots__ = ("n", "wire")

    def __init__(self, n: int, *, wire: bool = False) -> None:
        self.n = n
        self.wire = wire

    def apply(self, sim: Simulator, address: Address, effects: list[Any]) -> None:
        disk: SimDisk | None = None
        for effect in effects:
            kind = type(effect)
            if kind is Broadcast:
                payload = encode_frame(effect.message) if self.wire else effect.message
                for other in range(self.n):
                    if other != address:
                        sim.send(address, other, payload)
            elif kind is Send:
                payload = encode_frame(effect.message) if self.wire else effect.message
                sim.send(address, effect.to, payload)
            elif kind is SetTimer:
                sim.set_timer(address, effect.timer, effect.at_ms)
            elif kind in (PersistView, PersistSlot, PersistBlock, PersistCheckpoint):
                if disk is None:
                    disk = sim.disk(address)
                    if disk is None:
                        disk = SimDisk()
                        sim.persist(address, disk)
                disk.write(effect)
            else:
                sim.output(address, effect)

    def message_input(self, source: Address, payload: Any) -> Any:
        if self.wire:
            payload = decode_frame(source, payload)
        return MessageReceived(peer=source, message=payload)

    def timer_input(self, key: Any) -> Any:
        return TimerFired(timer=key)
