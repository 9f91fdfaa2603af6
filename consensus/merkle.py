"""A binary Merkle tree with membership proofs (RFC 6962 hashing, promoted odd nodes).

Rules:
1. Leaves are hashed ``sha256(0x00 || leaf)`` and inner nodes ``sha256(0x01 || left ||
   right)``, so a leaf can never pass for an inner node (RFC 6962 section 2.1).
2. An odd node at the end of a level is promoted unchanged to the next level; it is never
   duplicated (duplication lets two different lists share a root: CVE-2012-2459).
3. The empty tree's root is ``sha256(b"")``.
4. A proof is the list of sibling hashes from the leaf up, each with its side; verifying
   it needs only the root, the leaf and its index among ``count`` leaves.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of_hashes(level: list[bytes]) -> bytes:
    """Root over already-hashed leaves (``leaf_hash``), in order."""
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def merkle_root(leaves: list[bytes]) -> bytes:
    return root_of_hashes([leaf_hash(leaf) for leaf in leaves])


def prove(hashes: list[bytes], index: int) -> tuple[tuple[bytes, bool], ...]:
    """Audit path for leaf ``index``: (sibling, sibling_is_left) pairs from the bottom."""
    assert 0 <= index < len(hashes)
    path: list[tuple[bytes, bool]] = []
    level = hashes
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            path.append((level[sibling], sibling < index))
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        index //= 2
    return tuple(path)


def verify(root: bytes, leaf: bytes, path: tuple[tuple[bytes, bool], ...]) -> bool:
    """True when ``leaf`` with ``path`` hashes up to ``root``."""
    current = leaf_hash(leaf)
    for sibling, sibling_is_left in path:
        current = node_hash(sibling, current) if sibling_is_left else node_hash(current, sibling)
    return current == root
