"""Valid registry bodies and signers for the registry tests."""

from __future__ import annotations

from typing import Any

from consensus.codec import Ed25519Signer
from prsm_node.registry.messages import CAPABILITY_KEY, Entry, Kind, sign_entry

CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
CID2 = "bafkreie7q3iidccmpvszul7kudcvvuavuo7u6gzlbobczuk5nqk3b4akba"
NOW_MS = 1_800_000_000_000
HOUR_MS = 3600 * 1000


def signer(seed: int) -> Ed25519Signer:
    return Ed25519Signer.from_seed(bytes([seed]) * 32)


def model_fields(name: str = "gpt-mini", cid: str = CID) -> dict[str, Any]:
    return {
        "name": name,
        "architecture": "transformer",
        "tags": ["llm", "small"],
        "manifest_cid": cid,
        "size_bytes": 1234,
        "description": "a test model",
    }


def capability_fields(gpus: int = 0, models: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "cpu_cores": 8,
        "memory_bytes": 16 * 2**30,
        "gpus": [{"name": f"gpu{i}", "memory_bytes": 24 * 2**30} for i in range(gpus)],
        "storage_free_bytes": 2**40,
        "models": list(models),
        "job_kinds": ["inference"],
        "price_hints": {"inference": "1000"},
        "addrs": ["/ip4/127.0.0.1/tcp/4001"],
        "version": "0.1.0",
    }


def offer_fields(model_cid: str = CID, job_kind: str = "inference") -> dict[str, Any]:
    return {
        "job_kind": job_kind,
        "model_cid": model_cid,
        "input_cid": "",
        "price_units": "1500000000000000000",
        "deadline_ms": NOW_MS + HOUR_MS,
        "gpu_required": False,
        "memory_bytes_min": 0,
    }


def fields_of(kind: Kind) -> tuple[dict[str, Any], str]:
    if kind is Kind.MODEL:
        return model_fields(), CID
    if kind is Kind.CAPABILITY:
        return capability_fields(), CAPABILITY_KEY
    return offer_fields(), "offer-1"


def make(
    kind: Kind,
    *,
    seed: int = 1,
    seq: int = 1,
    fields: dict[str, Any] | None = None,
    key: str | None = None,
    issued_at_ms: int = NOW_MS,
    expires_at_ms: int = NOW_MS + HOUR_MS,
) -> Entry:
    default_fields, default_key = fields_of(kind)
    body = (fields if fields is not None else default_fields) | {
        "key": default_key if key is None else key,
        "seq": seq,
        "issued_at_ms": issued_at_ms,
        "expires_at_ms": expires_at_ms,
    }
    return sign_entry(kind, body, signer(seed))
