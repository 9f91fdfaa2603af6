"""A follower checks each certified block against the validator set of its own height:
across an epoch boundary the new set's certificates pass and the old set's fail."""

from __future__ import annotations

import msgpack
import pytest

from consensus.ledger import LedgerState
from consensus.messages import CertifiedBlock, Commit, sign_message
from prsm_node.errors import PeerProtocolError
from prsm_node.ledger_follow import checked_blocks, decode_blocks
from tests.consensus.test_epochs import BY_KEY, GENESIS, joined_chain


def answer_of(blocks: list[CertifiedBlock]) -> dict:
    return {"blocks": [msgpack.packb([c.block.to_plain(), [s.to_plain() for s in c.certificate]],
                                     use_bin_type=True) for c in blocks]}


def test_blocks_across_a_set_change_verify_against_their_own_heights_set() -> None:
    chain = joined_chain()
    chain.filler(2)
    state, writes = checked_blocks("peer", answer_of(chain.blocks), LedgerState(GENESIS))
    assert state.height == 6 and state.epoch == 4 and len(state.validators) == 5
    assert [w.state.height for w in writes] == [1, 2, 3, 4, 5, 6]
    assert len(decode_blocks("peer", answer_of(chain.blocks))) == 6


def test_a_block_after_the_boundary_certified_by_the_old_set_is_the_peers_fault() -> None:
    chain = joined_chain()
    chain.filler(1)
    fifth = chain.blocks[4].block
    old = tuple(sign_message(Commit(view=0, seq=5, digest=fifth.block_hash), i, BY_KEY[k], 0)
                for i, k in enumerate(GENESIS.validator_keys()))
    forged = CertifiedBlock(block=fifth, certificate=old)
    with pytest.raises(PeerProtocolError, match="bad certified block"):
        checked_blocks("peer", answer_of([*chain.blocks[:4], forged]), LedgerState(GENESIS))
