"""Byzantine validators for the PBFT simulation: wrappers that lie with a real key.

Rules:
1. A Byzantine replica runs an honest ``Replica`` inside and rewrites its outgoing effects;
   it signs its lies with its own validator key (it cannot forge other replicas' keys, as
   in the PBFT fault model). Persist effects pass through unchanged.
2. Kinds: ``equivocate`` (as primary: one block to half the replicas, a different valid
   block to the other half, a few get both; and COMMITs for both), ``conflict`` (each
   PREPARE/COMMIT goes out with the real digest to half the replicas and a conflicting
   digest to the others), ``silent`` (sends nothing, still receives).
3. All choices come from the wrapper's seeded ``random.Random``.
"""

from __future__ import annotations

import random
from typing import Any

from consensus.codec import Signer
from consensus.ledger import Block
from consensus.messages import Commit, Prepare, PrePrepare, Signed, sign_message
from consensus.replica import Replica
from consensus.replica_effects import Broadcast, Send

BYZANTINE_KINDS = ("equivocate", "conflict", "silent")


class ByzantineReplica:
    __slots__ = ("inner", "kind", "rng", "signer")

    def __init__(self, inner: Replica, kind: str, signer: Signer, rng: random.Random) -> None:
        assert kind in BYZANTINE_KINDS
        self.inner = inner
        self.kind = kind
        self.signer = signer
        self.rng = rng

    @property
    def n(self) -> int:
        return self.inner.n

    @property
    def validators(self) -> tuple[bytes, ...]:
        return self.inner.validators

    def statistics(self) -> Any:
        return self.inner.statistics()

    @property
    def ledger(self) -> Any:
        return self.inner.ledger

    def handle(self, now_ms: int, event: Any) -> list[Any]:
        effects = self.inner.handle(now_ms, event)
        if self.kind == "silent":
            return [e for e in effects if type(e) not in (Send, Broadcast)]
        out: list[Any] = []
        for effect in effects:
            if type(effect) is Broadcast:
                out.extend(self._lie(effect.message))
            else:
                out.append(effect)
        return out

    def _sign(self, body: Any) -> Signed:
        assert self.inner.index is not None
        return sign_message(body, self.inner.index, self.signer, self.inner.epoch)

    def _others(self) -> tuple[list[int], list[int]]:
        others = [i for i in range(self.n) if i != self.inner.index]
        self.rng.shuffle(others)
        half = len(others) // 2
        return others[:half], others[half:]

    def _lie(self, message: Signed) -> list[Any]:
        body = message.body
        kind = type(body)
        if kind is PrePrepare and self.kind == "equivocate":
            block = body.block
            other = Block.make(height=block.height, prev_hash=block.prev_hash,
                               timestamp_ms=block.timestamp_ms + 1, txs=block.txs,
                               state_root=block.state_root)
            twin = self._sign(PrePrepare(view=body.view, seq=body.seq, block=other))
            first, second = self._others()
            out: list[Any] = [Send(to=i, message=message) for i in first]
            out += [Send(to=i, message=twin) for i in second]
            if self.rng.random() < 0.5 and first:  # someone sees both: evidence
                out.append(Send(to=self.rng.choice(first), message=twin))
            out += [Send(to=i, message=self._sign(Commit(view=body.view, seq=body.seq,
                                                         digest=other.block_hash)))
                    for i in second]
            return out
        if kind is Prepare or kind is Commit:
            first, second = self._others()
            fake = self.rng.randbytes(32)
            liar = self._sign(kind(view=body.view, seq=body.seq, digest=fake))
            return ([Send(to=i, message=message) for i in first]
                    + [Send(to=i, message=liar) for i in second])
        return [Broadcast(message=message)]
