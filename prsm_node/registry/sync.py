"""Shapes of /prsm/registry-sync/1.0.0: a bounded, paged pull of the entries a peer holds.

A node that joins late or was offline pulls what it missed from a peer instead of
depending on having been online when it was gossiped. One framed request per page over
the wire layer (prsm_node/net/wire.py):

  SUMMARY  {"op": "summary", "after": signer, "limit": n}
        -> {"signers": [[signer, digest], ...], "done": bool}
     signers in increasing byte order after `after`, at most min(n, the server's cap);
     digest = 16 bytes of sha256 over the sorted (kind, key, seq) of the signer's live
     entries, so equal digests mean "nothing newer here".
  ENTRIES  {"op": "entries", "signers": [signer, ...], "after": [signer, kind, key] | None,
            "bytes_max": n}
        -> {"entries": [message, ...], "next": [signer, kind, key] | None}
     the live entries of those signers in (signer, kind, key) order, at most
     min(n, the server's page bytes) in all; `next` is where to resume when the page
     filled up.

Rules: the client asks ENTRIES only for signers whose digest differs from its own, and
passes every returned message through exactly the check a gossiped one gets (size,
schema, signature, merge). Every size and count in an answer is checked against what was
asked before use; cursors must strictly increase, so a peer cannot keep a client paging
forever; the client also stops after `pages_max` pages. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consensus.codec import canonical
from prsm_node.registry.messages import KIND_OF_VALUE, PUBLIC_KEY_SIZE

PROTOCOL = "/prsm/registry-sync/1.0.0"
DIGEST_SIZE = 16
SIGNERS_PER_ENTRIES_MAX = 64
"""Signers named in one ENTRIES request: 64 * 32 bytes keeps the request small."""

Cursor = tuple[bytes, str, str]


class SyncProtocolError(Exception):
    """A sync request or answer that breaks the protocol; the shell blames the peer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class SummaryRequest:
    after: bytes
    limit: int


@dataclass(frozen=True, slots=True)
class EntriesRequest:
    signers: tuple[bytes, ...]
    after: Cursor | None
    bytes_max: int


@dataclass(frozen=True, slots=True)
class SummaryAnswer:
    signers: list[tuple[bytes, bytes]]
    done: bool


@dataclass(frozen=True, slots=True)
class EntriesAnswer:
    entries: list[bytes]
    next: Cursor | None


def signer_digest(items: Iterable[tuple[str, str, int]]) -> bytes:
    """Digest of one signer's live entries, given as (kind, key, seq)."""
    return hashlib.sha256(canonical(sorted(items))).digest()[:DIGEST_SIZE]


def _is_signer(value: Any) -> bool:
    return type(value) is bytes and len(value) == PUBLIC_KEY_SIZE


def _cursor(value: Any) -> Cursor | None:
    if value is None:
        return None
    if not (type(value) is list and len(value) == 3 and _is_signer(value[0])):
        raise SyncProtocolError("cursor is not [signer, kind, key]")
    kind, key = value[1], value[2]
    if kind not in KIND_OF_VALUE or type(key) is not str or len(key) > 128:
        raise SyncProtocolError("cursor kind or key out of range")
    return (value[0], kind, key)


def summary_request(after: bytes, limit: int) -> dict[str, Any]:
    return {"op": "summary", "after": after, "limit": limit}


def entries_request(request: EntriesRequest) -> dict[str, Any]:
    assert 0 < len(request.signers) <= SIGNERS_PER_ENTRIES_MAX
    return {
        "op": "entries",
        "signers": list(request.signers),
        "after": list(request.after) if request.after else None,
        "bytes_max": request.bytes_max,
    }


def parse_request(payload: Any) -> SummaryRequest | EntriesRequest:
    if type(payload) is not dict:
        raise SyncProtocolError("request is not a map")
    op = payload.get("op")
    if op == "summary" and set(payload) == {"op", "after", "limit"}:
        after, limit = payload["after"], payload["limit"]
        if type(after) is not bytes or len(after) > PUBLIC_KEY_SIZE:
            raise SyncProtocolError("summary 'after' is not a signer")
        if type(limit) is not int or not 0 < limit <= 1 << 16:
            raise SyncProtocolError("summary 'limit' out of range")
        return SummaryRequest(after=after, limit=limit)
    if op == "entries" and set(payload) == {"op", "signers", "after", "bytes_max"}:
        signers, bytes_max = payload["signers"], payload["bytes_max"]
        if type(signers) is not list or not 0 < len(signers) <= SIGNERS_PER_ENTRIES_MAX:
            raise SyncProtocolError(f"entries needs 1 to {SIGNERS_PER_ENTRIES_MAX} signers")
        if not all(_is_signer(signer) for signer in signers):
            raise SyncProtocolError("entries 'signers' holds something other than signers")
        if type(bytes_max) is not int or not 1024 <= bytes_max <= 1 << 30:
            raise SyncProtocolError("entries 'bytes_max' out of range")
        return EntriesRequest(
            signers=tuple(signers), after=_cursor(payload["after"]), bytes_max=bytes_max
        )
    raise SyncProtocolError("unknown request")


def parse_summary_answer(payload: Any, request: SummaryRequest) -> SummaryAnswer:
    if type(payload) is not dict or set(payload) != {"signers", "done"}:
        raise SyncProtocolError("summary answer is not a map of signers and done")
    signers, done = payload["signers"], payload["done"]
    if type(done) is not bool or type(signers) is not list or len(signers) > request.limit:
        raise SyncProtocolError("summary answer's done or signers out of range")
    pairs: list[tuple[bytes, bytes]] = []
    previous = request.after
    for item in signers:
        if not (type(item) is list and len(item) == 2 and _is_signer(item[0])):
            raise SyncProtocolError("summary item is not [signer, digest]")
        if type(item[1]) is not bytes or len(item[1]) != DIGEST_SIZE:
            raise SyncProtocolError("summary digest is not 16 bytes")
        if item[0] <= previous:
            raise SyncProtocolError("summary signers do not strictly increase")
        previous = item[0]
        pairs.append((item[0], item[1]))
    if not done and not pairs:
        raise SyncProtocolError("summary page is empty but not done")
    return SummaryAnswer(signers=pairs, done=done)


def parse_entries_answer(payload: Any, request: EntriesRequest) -> EntriesAnswer:
    if type(payload) is not dict or set(payload) != {"entries", "next"}:
        raise SyncProtocolError("entries answer is not a map of entries and next")
    entries = payload["entries"]
    if type(entries) is not list or not all(type(entry) is bytes for entry in entries):
        raise SyncProtocolError("entries answer holds something other than messages")
    if sum(len(entry) for entry in entries) > request.bytes_max:
        raise SyncProtocolError("entries answer is larger than a page")
    following = _cursor(payload["next"])
    if following is not None:
        if not entries or (request.after is not None and following <= request.after):
            raise SyncProtocolError("entries cursor does not move forward")
        if following[0] not in request.signers:
            raise SyncProtocolError("entries cursor names a signer that was not asked for")
    return EntriesAnswer(entries=entries, next=following)
