"""Followers: nodes outside the validator set keep the ledger by pulling certified blocks.

`/prsm/ledger/1.0.0` request `{"from": height, "count": n}` (n <= BLOCKS_PER_REQUEST_MAX);
answer `{"blocks": [bytes, ...]}` from the answerer's store, in height order, each the
msgpack of `[block, [commit, ...]]` as the consensus codec writes it (decoded with its own
rules: tuples, canonical bodies, size caps). Any node with blocks serves it.

The ledger service feeds decoded blocks (`decode_blocks`) to its replica, passive or not
(`CertifiedBlocksReceived`, after a `NeedBlocks`), which checks each block's certificate
against the configuration of the state before it and re-executes it. `checked_blocks` does
the same checks outside a replica: each certificate must hold a quorum of COMMITs by the
validator set, and of the epoch, that the state before the block names (the set changes at
epoch boundaries: consensus/replica_epochs.py), and `apply_block` checks the state root.
One bad block and the answer is the peer's fault (scored down), nothing of it is kept.
"""

from __future__ import annotations

from typing import Any

import msgpack
import structlog
import trio

from consensus.certificates import CertificateError, verify_commit_certificate
from consensus.ledger import Block, BlockInvalid, LedgerState
from consensus.messages import CertifiedBlock, decode_signed
from consensus.replica_effects import PersistBlock
from consensus.store import LedgerStore
from prsm_node.errors import PeerProtocolError

log = structlog.get_logger(__name__)

LEDGER_PROTOCOL = "/prsm/ledger/1.0.0"
BLOCKS_PER_REQUEST_MAX = 64
FOLLOW_INTERVAL_S = 0.5
CERTIFIED_BLOCK_BYTES_MAX = 2 * 1024 * 1024  # 500 tx x 1 KiB plus 100 commits, with room


async def serve_blocks(store: LedgerStore, peer: str, payload: Any) -> dict[str, Any]:
    """Answer a follower from our store (read in a worker thread)."""
    if not isinstance(payload, dict) or set(payload) != {"from", "count"}:
        raise PeerProtocolError(peer, "ledger: request must be {'from': int, 'count': int}")
    start, count = payload["from"], payload["count"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (start, count)):
        raise PeerProtocolError(peer, "ledger: 'from' and 'count' must be positive integers")
    count = min(count, BLOCKS_PER_REQUEST_MAX)

    def read() -> list[Any]:
        found = []
        for height in range(start, start + count):
            row = store.block(height)
            if row is None:
                break
            block, certificate = row
            plain = [block.to_plain(), [signed.to_plain() for signed in certificate]]
            found.append(msgpack.packb(plain, use_bin_type=True))
        return found

    return {"blocks": await trio.to_thread.run_sync(read)}


def decode_blocks(peer: str, answer: Any) -> tuple[CertifiedBlock, ...]:
    """Decode an answer (nothing verified yet: the replica checks every certificate)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("blocks"), list):
        raise PeerProtocolError(peer, "ledger: answer must be {'blocks': [...]}")
    if len(answer["blocks"]) > BLOCKS_PER_REQUEST_MAX:
        raise PeerProtocolError(peer, "ledger: more blocks than asked for")
    blocks = []
    for item in answer["blocks"]:
        try:
            if not isinstance(item, bytes) or len(item) > CERTIFIED_BLOCK_BYTES_MAX:
                raise ValueError("a certified block is one bounded byte string")
            block_plain, certificate_plain = msgpack.unpackb(
                item, raw=False, use_list=False, strict_map_key=False
            )
            block = Block.from_plain(block_plain)
            certificate = tuple(decode_signed(plain) for plain in certificate_plain)
        except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
            raise PeerProtocolError(peer, f"ledger: bad certified block: {error}") from None
        blocks.append(CertifiedBlock(block=block, certificate=certificate))
    return tuple(blocks)


def checked_blocks(
    peer: str, answer: Any, state: LedgerState
) -> tuple[LedgerState, list[PersistBlock]]:
    """Verify an answer block by block, each against the configuration of the state
    before it; the state after the last and what to persist."""
    writes = []
    for certified in decode_blocks(peer, answer):
        block, certificate = certified.block, certified.certificate
        try:
            verify_commit_certificate(block, certificate, state.validators, state.epoch)
            state = state.apply_block(block)
        except (CertificateError, BlockInvalid) as error:
            raise PeerProtocolError(peer, f"ledger: bad certified block: {error}") from None
        writes.append(PersistBlock(block=block, certificate=certificate, state=state))
    return state, writes
