"""Peer scores: how much bad input each peer has sent, and whether to cut it off.

A peer's fault (a malformed frame, a forged message) costs it `PENALTY` points; at
`score_min` the node disconnects it and refuses its connections while the score stays
there. The table is bounded at
`peers_tracked_max` entries (the least recently penalised is forgotten first), so a flood
of fresh peer ids cannot grow it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

PENALTY = 10


@dataclass(frozen=True, slots=True)
class ScoreStatistics:
    rejected_total: int
    peers_penalised: int
    peers_banned: int


class PeerScores:
    def __init__(self, *, score_min: int = -100, peers_tracked_max: int = 1024) -> None:
        self._score_min = score_min
        self._peers_tracked_max = peers_tracked_max
        self._scores: OrderedDict[str, int] = OrderedDict()
        self._rejected_total = 0
        self.on_drop: Callable[[str], None] | None = None  # set by the node: disconnects

    def penalise(self, peer: str, reason: str) -> bool:
        """Count one bad input from `peer`; True when the peer should now be dropped."""
        self._rejected_total += 1
        score = self._scores.pop(peer, 0) - PENALTY
        self._scores[peer] = score
        while len(self._scores) > self._peers_tracked_max:
            self._scores.popitem(last=False)
        log.warning("peers.rejected_input", peer=peer, reason=reason, score=score)
        if score > self._score_min:
            return False
        log.warning("peers.dropped_for_bad_input", peer=peer, score=score)
        if self.on_drop is not None:
            self.on_drop(peer)
        return True

    def score(self, peer: str) -> int:
        return self._scores.get(peer, 0)

    def is_banned(self, peer: str) -> bool:
        return self.score(peer) <= self._score_min

    def statistics(self) -> ScoreStatistics:
        return ScoreStatistics(
            rejected_total=self._rejected_total,
            peers_penalised=len(self._scores),
            peers_banned=sum(score <= self._score_min for score in self._scores.values()),
        )
