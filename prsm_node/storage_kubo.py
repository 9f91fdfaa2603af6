"""The optional Kubo backend: every block this node stores is also put into a Kubo daemon.

Rules:
1. Kubo's HTTP RPC only (``POST /api/v0/block/put?cid-codec=...&mhtype=sha2-256``, the
   block as a multipart file); never ipfshttpclient, which refuses every Kubo after 0.8
   (issue 5). httpx is the client: py-libp2p 0.8.1 already requires it, so it is installed
   with the node (it should still be named in setup.cfg; see the report of issue 5).
2. Synchronous: ``put`` is called from the worker thread that stores the block, never from
   the event loop. One ``httpx.Client`` (thread-safe connection pool) per backend.
3. The answer is checked: Kubo must name the CID we computed, else the push counts as
   failed. A failed push never fails the store: the block is safe in our own store, the
   failure is counted and logged (``storage.kubo_push_failed``) for the operator.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx
import structlog

from storage.cid import CODEC_DAG_PB, CODECS
from storage.unixfs import Block

log = structlog.get_logger(__name__)

BLOCK_PUT_PATH = "/api/v0/block/put"
REPLY_SIZE_MAX = 4096
"""Kubo answers ``{"Key": "<cid>", "Size": n}``: a few dozen bytes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KuboStatistics:
    pushed: int
    failed: int


class KuboBackend:
    """Pushes blocks to one Kubo daemon (module rules)."""

    def __init__(self, api_url: str, *, timeout_s: float) -> None:
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.api_url, timeout=timeout_s)
        self._lock = threading.Lock()
        self._pushed = 0
        self._failed = 0

    def close(self) -> None:
        self._client.close()

    def put(self, block: Block) -> bool:
        """Push one block; True when Kubo stored it under the same CID."""
        problem = self._push(block)
        with self._lock:
            if problem is None:
                self._pushed += 1
            else:
                self._failed += 1
        if problem is not None:
            log.warning("storage.kubo_push_failed", cid=str(block.cid), reason=problem)
        return problem is None

    def _push(self, block: Block) -> str | None:
        codec = "dag-pb" if block.cid.codec == CODEC_DAG_PB else CODECS[block.cid.codec]
        params = {"cid-codec": codec, "mhtype": "sha2-256", "pin": "false"}
        try:
            response = self._client.post(
                BLOCK_PUT_PATH, params=params, files={"file": ("block", block.data)}
            )
        except httpx.HTTPError as error:
            return f"request failed: {error!r}"
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        if len(response.content) > REPLY_SIZE_MAX:
            return "reply larger than expected"
        try:
            key = response.json().get("Key")
        except (ValueError, AttributeError):
            return "reply is not a JSON object"
        if key != str(block.cid):
            return f"Kubo stored it as {key!r}, not {block.cid}"
        return None

    def statistics(self) -> KuboStatistics:
        with self._lock:
            return KuboStatistics(pushed=self._pushed, failed=self._failed)
