"""Canonical encoding and domain-separated Ed25519 signatures (DESIGN.md, "Signed objects").

Rules:
1. ``canonical(obj)`` is msgpack with every map's keys sorted (keys all str, sorted by code
   point, or all bytes, sorted bytewise), tuples as arrays, and no floats anywhere: floats
   are refused, never rounded, so every node computes the same bytes for the same value.
2. A signature is ``ed25519(key, domain || canonical(body))``; the domain (``prsm/tx/1``,
   ``prsm/pbft/2``) makes a signature for one object kind useless for any other.
3. No clock, no randomness: ``Ed25519Signer`` wraps a key the caller owns.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
HASH_SIZE = 32


AMOUNT_SIZE = 16
AMOUNT_MAX = 2**128 - 1
"""Amounts exceed msgpack's 64-bit integers (1,000 FTNS is 10^21 base units), so an
amount is encoded as 16 big-endian bytes; 2^128 is far above any supply (10^9 FTNS ~ 2^90)."""


def amount_to_bytes(amount: int) -> bytes:
    assert 0 <= amount <= AMOUNT_MAX, amount
    return amount.to_bytes(AMOUNT_SIZE, "big")


def amount_from_bytes(data: Any) -> int:
    if type(data) is not bytes or len(data) != AMOUNT_SIZE:
        raise ValueError("an amount is 16 big-endian bytes")
    return int.from_bytes(data, "big")


_SCALARS = frozenset({bytes, str, int, bool, type(None)})
"""Types msgpack packs as themselves: no key order to fix, nothing to refuse. Checking
them before recursing skips most calls (a transaction body has ~30 scalar leaves)."""


def _sorted(obj: Any) -> Any:
    kind = type(obj)
    if kind is dict:
        keys = list(obj)
        key_type = type(keys[0]) if keys else str
        if key_type not in (str, bytes) or any(type(k) is not key_type for k in keys):
            raise TypeError("canonical maps need keys all str or all bytes")
        keys.sort()
        return {k: v if type(v := obj[k]) in _SCALARS else _sorted(v) for k in keys}
    if kind is list or kind is tuple:
        return [v if type(v) in _SCALARS else _sorted(v) for v in obj]
    if kind is float:
        raise TypeError("floats are not allowed in canonical encodings")
    return obj


def canonical(obj: Any) -> bytes:
    """msgpack with sorted map keys, lists for tuples, and no floats."""
    return msgpack.packb(_sorted(obj), use_bin_type=True)


def unpack(data: bytes, size_max: int) -> Any:
    """Decode msgpack from a peer: size checked first, no floats, bounded containers."""
    if len(data) > size_max:
        raise ValueError(f"{len(data)} bytes > {size_max}")
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Signer(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


class Ed25519Signer:
    """A signer over a PyNaCl key (the shell loads it from the node's identity)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: SigningKey) -> None:
        self._key = key
        self.public_key = bytes(key.verify_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        return cls(SigningKey(seed))

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature


def sign_bytes(signer: Signer, domain: bytes, payload: bytes) -> bytes:
    return signer.sign(domain + payload)


def verify_bytes(public_key: bytes, domain: bytes, payload: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        VerifyKey(public_key).verify(domain + payload, signature)
    except (BadSignatureError, ValueError):
        return False
    return True
