"""Plugs ``consensus.replica.Replica`` into the general simulator (``simulations/sim.py``).

Rules:
1. This file is the only PBFT-specific glue: it maps the replica's effects to simulator
   calls (``send``, ``set_timer``, ``persist``, ``output``) and back.
2. Addresses are node ids, fixed for a run. With ``keys`` (the public key of each address)
   a replica index is translated through the configuration the replica last announced
   (``ValidatorsChanged``), in effect order for what it sends and at delivery time for what
   it receives, as the real shell maps peer ids: so the validator set may change during a
   run, and a sender outside the receiver's set arrives as ``peer=None``. Without ``keys``
   the address is the genesis index (a run whose set never changes).
3. The simulated disk (``SimDisk``) is an in-memory copy of exactly what the replica asked
   to persist, updated in effect order, so a crash at any event boundary leaves on "disk"
   what a real store would hold, and a restart (``SimDisk.recovered``) rebuilds the
   replica from it alone. Ledger states are immutable, so keeping the object is a copy.
4. ``NeedBlocks`` is answered as the shell's ``/prsm/ledger/1.0.0`` fetch would be: from
   one reachable node among ``sources`` (the honest ones) that holds certified blocks from
   the asked height on (the one holding most; ties: lowest address), after one network
   latency; the replica checks every certificate itself.
5. ``wire=True`` round-trips every message through the real codec (``encode_frame`` /
   ``decode_frame``): slower, and proves the messages are plain data.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from consensus.ledger import Block, LedgerState
from consensus.messages import CertifiedBlock, Signed, decode_frame, encode_frame
from consensus.replica_effects import (
    Broadcast,
    CertifiedBlocksReceived,
    MessageReceived,
    NeedBlocks,
    PersistBlock,
    PersistCheckpoint,
    PersistSlot,
    PersistView,
    Recovered,
    Send,
    SetTimer,
    SlotRecord,
    TimerFired,
    ValidatorsChanged,
)
from simulations.sim import Address, Simulator

RECENT_BLOCKS_MAX = 256
FETCH_BLOCKS_MAX = 64  # as ledger_follow.BLOCKS_PER_REQUEST_MAX


class SimDisk:
    """What one replica persisted (the simulator's stand-in for ``LedgerStore``)."""

    __slots__ = ("in_view_change", "last_certificate", "ledger", "recent", "slots",
                 "stable", "view", "view_epoch", "writes")

    def __init__(self) -> None:
        self.view = 0
        self.in_view_change = False
        self.view_epoch = 0
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
            self.view_epoch = effect.epoch
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
                         recent_blocks=tuple(self.recent.values()),
                         view_epoch=self.view_epoch)


class PbftSimAdapter:
    """``CoreAdapter`` for Replica cores (and Byzantine wrappers around them)."""

    __slots__ = ("address_of_key", "configs", "keys", "n", "sources", "wire")

    def __init__(self, n: int, *, wire: bool = False, keys: list[bytes] | None = None) -> None:
        self.n = n
        self.wire = wire
        self.keys = keys
        self.address_of_key = {key: a for a, key in enumerate(keys)} if keys else {}
        self.configs: dict[Address, tuple[bytes, ...]] = {}
        """Address -> the validator keys its replica last announced (rule 2)."""
        self.sources: list[Address] | None = None
        """Who answers ``NeedBlocks`` (None: every node)."""

    def _address(self, config: tuple[bytes, ...] | None, index: int) -> Address:
        if self.keys is None or config is None:
            return index
        return self.address_of_key[config[index]]

    def apply(self, sim: Simulator, address: Address, effects: list[Any]) -> None:
        disk: SimDisk | None = None
        config = self.configs.get(address)
        for effect in effects:
            kind = type(effect)
            if kind is Broadcast:
                payload = encode_frame(effect.message) if self.wire else effect.message
                targets = range(self.n) if config is None or self.keys is None else [
                    self.address_of_key[key] for key in config]
                for other in targets:
                    if other != address:
                        sim.send(address, other, (other, payload))
            elif kind is Send:
                payload = encode_frame(effect.message) if self.wire else effect.message
                other = self._address(config, effect.to)
                sim.send(address, other, (other, payload))
            elif kind is SetTimer:
                sim.set_timer(address, effect.timer, effect.at_ms)
            elif kind in (PersistView, PersistSlot, PersistBlock, PersistCheckpoint):
                if disk is None:
                    disk = sim.disk(address)
                    if disk is None:
                        disk = SimDisk()
                        sim.persist(address, disk)
                disk.write(effect)
            elif kind is NeedBlocks:
                self._answer(sim, address, effect.from_height)
            else:
                if kind is ValidatorsChanged:
                    config = self.configs[address] = effect.validators
                sim.output(address, effect)

    def _answer(self, sim: Simulator, address: Address, from_height: int) -> None:
        best: list[CertifiedBlock] = []
        for source in self.sources if self.sources is not None else range(self.n):
            if source == address or not sim.reachable(source, address):
                continue
            core = sim.core(source)
            recent = getattr(getattr(core, "inner", core), "recent", {})
            blocks = []
            for height in range(from_height, from_height + FETCH_BLOCKS_MAX):
                held = recent.get(height)
                if held is None or not held.certificate:  # a snapshot's block: no certificate
                    break
                blocks.append(held)
            if len(blocks) > len(best):
                best = blocks
        if best:
            sim.inject(address, CertifiedBlocksReceived(blocks=tuple(best)),
                       sim.now_ms + sim.network.latency_base_ms)

    def message_input(self, source: Address, payload: Any) -> Any:
        destination, message = payload
        if self.wire:
            message = decode_frame(source, message)
        if self.keys is None:
            return MessageReceived(peer=source, message=message)
        config = self.configs.get(destination, ())
        key = self.keys[source]
        return MessageReceived(peer=config.index(key) if key in config else None,
                               message=message)

    def timer_input(self, key: Any) -> Any:
        return TimerFired(timer=key)
