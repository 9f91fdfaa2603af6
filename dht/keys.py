"""Kademlia keys: 256-bit identifiers, XOR distance and bucket indices.

Rules:
1. Every identifier in the keyspace is ``sha256(bytes)`` read as a big-endian unsigned
   integer: a peer's key hashes its peer id bytes, a record's key hashes the record key bytes.
   This is the libp2p Kademlia spec ("Distance ... XOR of the SHA256 hashes"), which makes
   the keyspace uniform even when peer ids or record keys are not.
2. Keys are Python ``int`` values (0 <= key < 2**256), so XOR distance is one machine-level
   operation and comparisons order keys by distance directly.
3. A bucket index is the common-prefix length (cpl) of two keys: 0 means the keys differ in
   their top bit (the far half of the keyspace), 255 means they differ only in the last bit.
   Equal keys have no bucket (a node never stores itself).

Pure functions only: no clock, no global randomness (a ``random.Random`` is passed in).
"""

from __future__ import annotations

import hashlib
import random

KEY_BITS = 256
"""Bits per key: sha256 output size (libp2p Kademlia spec, "Keyspace")."""

KEY_MAX = (1 << KEY_BITS) - 1


def key_from_bytes(data: bytes) -> int:
    """Map a peer id or a record key to the 256-bit keyspace (sha256, big-endian)."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def distance(a: int, b: int) -> int:
    """XOR distance (Kademlia paper §2.1): symmetric, unidirectional, triangle inequality."""
    return a ^ b


def common_prefix_length(a: int, b: int) -> int:
    """Number of leading bits that ``a`` and ``b`` share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()


def bucket_index(own: int, other: int) -> int:
    """Index of the k-bucket (by common prefix length) that ``other`` belongs to.

    Raises ValueError for ``own == other``: a node is never in its own table.
    """
    cpl = common_prefix_length(own, other)
    if cpl == KEY_BITS:
        raise ValueError("a key has no bucket relative to itself")
    return cpl


def random_key_in_bucket(own: int, index: int, rng: random.Random) -> int:
    """A uniformly random key whose common prefix with ``own`` is exactly ``index`` bits.

    Used to refresh an idle bucket (Kademlia paper §2.3: "picks a random ID in the bucket's
    range and performs a node search for that ID").
    """
    if not 0 <= index < KEY_BITS:
        raise ValueError(f"bucket index out of range: {index}")
    flip_bit = KEY_BITS - 1 - index
    prefix_mask = KEY_MAX ^ ((1 << (flip_bit + 1)) - 1)
    suffix = rng.getrandbits(flip_bit) if flip_bit > 0 else 0
    key = (own & prefix_mask) | ((~own) & (1 << flip_bit)) | suffix
    assert common_prefix_length(own, key) == index
    return key


def key_to_bytes(key: int) -> bytes:
    """The 32-byte big-endian form of a key (for logs and the wire)."""
    return key.to_bytes(KEY_BITS // 8, "big")
