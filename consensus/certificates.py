"""Quorums, the signature cache, and checks of certificates built from signed messages.

Rules:
1. n replicas tolerate ``f = (n - 1) // 3`` faults; a quorum is ``(n + f) // 2 + 1`` (2f+1
   when n = 3f+1), so any two quorums share at least one honest replica (Castro & Liskov,
   section 4.1). ``planted_bug="quorum-2f"`` breaks this on purpose for the simulator.
2. ``SignatureCache`` verifies each (encoded, signature) pair once and remembers it in a
   bounded LRU (DESIGN.md: ~10k Ed25519 verifies/s per core, and every PBFT message reaches
   a replica several times: directly, retransmitted, and inside view changes).
3. Certificate checks never trust a count: they count distinct signers that are validators,
   with valid signatures, over exactly the expected (view, seq, digest).
4. A cache belongs to one configuration (validator keys and ``epoch``): a message of
   another epoch fails ``check`` without a signature check, so every certificate (and the
   messages nested in view changes) is checked against the set that agreed it.
"""

from __future__ import annotations

from collections import OrderedDict

from consensus.codec import verify_bytes
from consensus.errors import ConsensusError
from consensus.ledger import Block
from consensus.messages import (
    PBFT_DOMAIN,
    Checkpoint,
    Commit,
    Prepare,
    PreparedProof,
    PrePrepare,
    Signed,
)


class CertificateError(ConsensusError):
    """A certificate (commit, prepared, checkpoint) does not prove what it claims."""


def fault_tolerance(n: int) -> int:
    return (n - 1) // 3


def quorum_size(n: int, planted_bug: str = "") -> int:
    f = fault_tolerance(n)
    if planted_bug == "quorum-2f":
        return max(1, 2 * f)
    return (n + f) // 2 + 1


def primary_of(view: int, n: int) -> int:
    return view % n


class SignatureCache:
    """Verifies PBFT signatures once; bounded LRU of verified message digests."""

    __slots__ = ("_verified", "epoch", "hits", "size_max", "validators", "verified")

    def __init__(self, validators: tuple[bytes, ...], size_max: int, epoch: int = 0) -> None:
        self.validators = validators
        self.epoch = epoch
        self.size_max = size_max
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self.hits = 0
        self.verified = 0

    def check(self, message: Signed) -> bool:
        if not 0 <= message.signer < len(self.validators) or message.epoch != self.epoch:
            return False
        key = message.digest()
        if key in self._verified:
            self._verified.move_to_end(key)
            self.hits += 1
            return True
        if not verify_bytes(self.validators[message.signer], PBFT_DOMAIN, message.encoded,
                            message.signature):
            return False
        self.verified += 1
        self._verified[key] = None
        if len(self._verified) > self.size_max:
            self._verified.popitem(last=False)
        return True


def _count(messages: tuple[Signed, ...], cache: SignatureCache, kind: type, view: int | None,
           seq: int, digest: bytes) -> set[int]:
    signers: set[int] = set()
    for message in messages:
        body = message.body
        if type(body) is not kind or body.seq != seq or body.digest != digest:
            raise CertificateError(f"a {kind.__name__} is for another slot or digest")
        if view is not None and body.view != view:
            raise CertificateError(f"a {kind.__name__} is for another view")
        if message.signer in signers or not cache.check(message):
            raise CertificateError(f"a {kind.__name__} is repeated or badly signed")
        signers.add(message.signer)
    return signers


def check_commit_certificate(block: Block, certificate: tuple[Signed, ...],
                             cache: SignatureCache, quorum: int) -> None:
    if not certificate:
        raise CertificateError("empty commit certificate")
    first = certificate[0].body
    if type(first) is not Commit:
        raise CertificateError("a commit certificate holds COMMIT messages")
    signers = _count(certificate, cache, Commit, first.view, block.height, block.block_hash)
    if len(signers) < quorum:
        raise CertificateError(f"{len(signers)} commits, {quorum} needed")


def verify_commit_certificate(block: Block, certificate: tuple[Signed, ...],
                              validators: tuple[bytes, ...], epoch: int = 0) -> None:
    """For followers: raises ``CertificateError`` unless 2f+1 validators committed ``block``.

    ``validators`` and ``epoch`` are those of the state before the block (the set that
    agreed it: ``LedgerState.validators`` and ``.epoch`` at ``block.height - 1``)."""
    cache = SignatureCache(validators, len(certificate) + 1, epoch)
    check_commit_certificate(block, certificate, cache, quorum_size(len(validators)))


def check_prepared_proof(proof: PreparedProof, cache: SignatureCache, quorum: int,
                         n: int) -> PrePrepare:
    """A pre-prepare by the view's primary plus quorum-1 matching prepares by backups."""
    pre_prepare = proof.pre_prepare.body
    if type(pre_prepare) is not PrePrepare or not cache.check(proof.pre_prepare):
        raise CertificateError("prepared proof without a valid pre-prepare")
    if proof.pre_prepare.signer != primary_of(pre_prepare.view, n):
        raise CertificateError("pre-prepare not signed by the view's primary")
    if pre_prepare.block.height != pre_prepare.seq:
        raise CertificateError("pre-prepare block height differs from its sequence number")
    signers = _count(proof.prepares, cache, Prepare, pre_prepare.view, pre_prepare.seq,
                     pre_prepare.block.block_hash)
    signers.discard(proof.pre_prepare.signer)
    if len(signers) + 1 < quorum:
        raise CertificateError(f"prepared proof with {len(signers)} prepares")
    return pre_prepare


def check_checkpoint_proof(seq: int, proof: tuple[Signed, ...], cache: SignatureCache,
                           quorum: int) -> bytes | None:
    """Returns the checkpoint digest proven by ``quorum`` signers (None for the start of
    the cache's epoch: genesis, or the block that installed this configuration, which
    every member executed before it could speak in the epoch: it needs no proof)."""
    if seq <= cache.epoch:
        if proof or seq < cache.epoch:
            raise CertificateError("the epoch's first checkpoint needs no proof, and an "
                                   "older one is of another configuration")
        return None
    if not proof or type(proof[0].body) is not Checkpoint:
        raise CertificateError("checkpoint proof holds CHECKPOINT messages")
    digest = proof[0].body.digest
    signers = _count(proof, cache, Checkpoint, None, seq, digest)
    if len(signers) < quorum:
        raise CertificateError(f"checkpoint proof with {len(signers)} signers")
    return digest
