"""Shared helpers for the storage tests: the fixtures' deterministic content."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "storage"


def pattern(size: int, seed: str | None) -> bytes:
    """sha256(seed || counter as 8-byte big-endian), concatenated; zeros when seed is None.

    scripts/make_ipfs_fixtures.mjs computes the same bytes in JavaScript."""
    if seed is None:
        return bytes(size)
    prefix = seed.encode()
    out = bytearray()
    for counter in range((size + 31) // 32):
        out += hashlib.sha256(prefix + counter.to_bytes(8, "big")).digest()
    return bytes(out[:size])


def unixfs_cases() -> list[dict[str, Any]]:
    return json.loads((FIXTURES / "unixfs_roots.json").read_text())["cases"]
