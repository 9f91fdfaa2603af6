"""View change and new view (Castro & Liskov, OSDI '99, section 4.4), as pure functions.

Rules:
1. A VIEW-CHANGE for view v carries the sender's stable checkpoint (seq and 2f+1 signed
   CHECKPOINT messages) and, for every slot above it that the sender prepared, the prepared
   certificate of the highest view it prepared in.
2. The new primary's choice is a function of the 2f+1 view changes alone (``select``):
   ``min_s`` is the highest proven stable checkpoint, and every seq in ``(min_s, max_s]``
   gets the block of the highest-view prepared certificate for it. Backups recompute the
   same function over the view changes in the NEW-VIEW and refuse it on any difference.
3. A gap (a seq in the range with no prepared certificate) cannot happen with honest
   proposers here, because a primary proposes ``seq`` only after executing ``seq - 1``
   and a backup prepares it only after executing ``seq - 1`` too (blocks carry their
   post-state root), so any seq prepared by a quorum had its predecessor committed, and
   quorum intersection puts that predecessor in some view change. ``select`` returns
   None on a gap and the new primary waits for other view changes rather than invent one.
"""

from __future__ import annotations

from consensus.certificates import (
    CertificateError,
    SignatureCache,
    check_checkpoint_proof,
    check_prepared_proof,
)
from consensus.ledger import Block
from consensus.messages import PreparedProof, Signed, ViewChange


def check_view_change(message: Signed, view: int, cache: SignatureCache, quorum: int,
                      n: int) -> ViewChange:
    """Validate a (signature-checked) VIEW-CHANGE's contents; raises ``CertificateError``."""
    body = message.body
    if type(body) is not ViewChange or body.new_view != view:
        raise CertificateError("not a view change for this view")
    check_checkpoint_proof(body.stable_seq, body.checkpoint_proof, cache, quorum)
    seen: set[int] = set()
    for proof in body.prepared:
        pre_prepare = check_prepared_proof(proof, cache, quorum, n)
        if pre_prepare.view >= view or pre_prepare.seq <= body.stable_seq:
            raise CertificateError("prepared proof from a later view or below the checkpoint")
        if pre_prepare.seq in seen:
            raise CertificateError("two prepared proofs for one sequence number")
        seen.add(pre_prepare.seq)
    return body


def select(view_changes: tuple[Signed, ...]) -> tuple[int, list[Block]] | None:
    """(min_s, blocks for min_s+1 .. max_s) from checked view changes; None on a gap."""
    bodies: list[ViewChange] = [message.body for message in view_changes]
    min_s = max(body.stable_seq for body in bodies)
    best: dict[int, PreparedProof] = {}
    for body in bodies:
        for proof in body.prepared:
            seq, proof_view = proof.pre_prepare.body.seq, proof.pre_prepare.body.view
            if seq <= min_s:
                continue
            held = best.get(seq)
            if held is None or held.pre_prepare.body.view < proof_view:
                best[seq] = proof
    if not best:
        return min_s, []
    max_s = max(best)
    if any(seq not in best for seq in range(min_s + 1, max_s + 1)):
        return None
    return min_s, [best[seq].pre_prepare.body.block for seq in range(min_s + 1, max_s + 1)]


def stable_checkpoint_of(view_changes: tuple[Signed, ...]) -> Signed:
    """The view change that proves the highest stable checkpoint (ties: lowest signer)."""
    return max(view_changes, key=lambda m: (m.body.stable_seq, -m.signer))
