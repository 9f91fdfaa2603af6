"""`/prsm/ping/1.0.0`: a round trip on the framed layer, to measure latency and liveness.

The request is `{"nonce": int}` and the answer echoes it. Latency is kept per peer as an
exponentially weighted moving average (alpha 0.3, as in go-libp2p's peerstore), bounded by
the number of connected peers (entries go when the peer disconnects).
"""

from __future__ import annotations

import random
from typing import Any

from prsm_node.errors import PeerProtocolError

PING_PROTOCOL = "/prsm/ping/1.0.0"
EWMA_ALPHA = 0.3
NONCE_MAX = 2**63


async def answer_ping(peer: str, payload: Any) -> dict[str, int]:
    if not isinstance(payload, dict) or set(payload) != {"nonce"}:
        raise PeerProtocolError(peer, "ping: expected {'nonce': int}")
    nonce = payload["nonce"]
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        raise PeerProtocolError(peer, "ping: nonce is not an integer")
    return {"nonce": nonce}


class LatencyTable:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._latency_ms: dict[str, float] = {}

    def new_nonce(self) -> int:
        return self._rng.randrange(NONCE_MAX)

    def record(self, peer: str, rtt_ms: float) -> None:
        previous = self._latency_ms.get(peer)
        self._latency_ms[peer] = (
            rtt_ms if previous is None else EWMA_ALPHA * rtt_ms + (1 - EWMA_ALPHA) * previous
        )

    def latency_ms(self, peer: str) -> float | None:
        return self._latency_ms.get(peer)

    def forget(self, peer: str) -> None:
        self._latency_ms.pop(peer, None)
