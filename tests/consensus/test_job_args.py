"""Job transaction arguments: strict schemas in decode_tx, canonical bytes, constructors."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from consensus.codec import sha256
from consensus.errors import TxRejected
from consensus.job_args import CID_LENGTH_MAX, WORKER_MODELS_MAX, JobKind
from consensus.job_tx import (
    TxHeader,
    job_accept,
    job_dispute,
    job_failure,
    job_result,
    job_submit,
    model_register,
    worker_register,
    worker_unregister,
)
from consensus.tx import decode_tx, sign_tx
from tests.consensus.helpers import CHAIN, FEE, signers

ALICE = signers(1, offset=70)[0]
HEADER = TxHeader(chain_id=CHAIN, sender=ALICE.public_key, nonce=0, fee=FEE)
JOB = sha256(b"job")
SIZE_MAX = 1024


def encoded_with_args(kind: str, args: Any) -> bytes:
    """Wire bytes with any args map, floats too (``decode_tx`` checks no signature)."""
    body = {"chain_id": CHAIN, "kind": kind, "sender": ALICE.public_key, "nonce": 0,
            "fee": FEE.to_bytes(16, "big"), "amount": bytes(16), "to": b"", "args": args}
    return msgpack.packb({"body": body, "signer": ALICE.public_key, "sig": bytes(64)},
                         use_bin_type=True)


@pytest.mark.parametrize("body", [
    model_register(HEADER, model="bafkm", royalty_bps=250, price=10**18),
    model_register(HEADER, model="bafkm", royalty_bps=250, price=10**18, teacher="bafkt",
                   teacher_share_bps=5_000),
    worker_register(HEADER, models=["bafkz", "bafka", "bafkz"], stake=5),
    worker_unregister(HEADER, amount=5),
    job_submit(HEADER, model="bafkm", job_kind=JobKind.DISTILL, input_cid="bafki",
               deadline_ms=10**12, max_price=3, params={"seed": 7, "name": "x", "z": b"\x00",
                                                        "greedy": True}),
    job_result(HEADER, job=JOB, output_cid="bafko", output_sha256=sha256(b"o")),
    job_failure(HEADER, job=JOB),
    job_accept(HEADER, job=JOB),
    job_dispute(HEADER, job=JOB, bond=9),
])
def test_every_job_kind_round_trips_through_the_wire(body) -> None:
    signed = sign_tx(body, ALICE)
    assert decode_tx(signed.encoded, SIZE_MAX) == signed
    assert len(signed.encoded) <= SIZE_MAX


def test_worker_register_lists_models_sorted_without_repeats() -> None:
    body = worker_register(HEADER, models=["bafkz", "bafka", "bafkz"], stake=5)
    assert body.args.models == ("bafka", "bafkz") and body.amount == 5


def test_largest_worker_register_fits_the_transaction_size() -> None:
    models = [f"{i}" * CID_LENGTH_MAX for i in range(WORKER_MODELS_MAX)]
    signed = sign_tx(worker_register(HEADER, models=models), ALICE)
    assert len(signed.encoded) <= SIZE_MAX


@pytest.mark.parametrize(("kind", "args", "match"), [
    ("stake", {"x": 1}, "expected exactly"),
    ("model_register", {"model": "bafkm", "royalty_bps": 1}, "expected exactly"),
    ("model_register", {"model": "bafkm", "royalty_bps": 10_001,
                        "price": (1).to_bytes(16, "big")}, "royalty_bps"),
    ("model_register", {"model": "bafk-m", "royalty_bps": 1,
                        "price": (1).to_bytes(16, "big")}, "model must be a CID"),
    ("model_register", {"model": "b" * (CID_LENGTH_MAX + 1), "royalty_bps": 1,
                        "price": (1).to_bytes(16, "big")}, "model must be a CID"),
    ("model_register", {"model": "bafkm", "royalty_bps": 1, "price": 1}, "price"),
    ("model_register", {"model": "bafkm", "royalty_bps": 1, "price": (1).to_bytes(16, "big"),
                        "teacher": "bafkt"}, "together"),
    ("model_register", {"model": "bafkm", "royalty_bps": 1, "price": (1).to_bytes(16, "big"),
                        "teacher": "bafkm", "teacher_share_bps": 1}, "own teacher"),
    ("worker_register", {"models": []}, "1..8"),
    ("worker_register", {"models": ["bafkb", "bafka"]}, "sorted"),
    ("worker_register", {"models": [f"bafk{i}" for i in range(9)]}, "1..8"),
    ("worker_unregister", {"models": ["bafka"]}, "expected exactly"),
    ("job_submit", {"model": "bafkm", "job_kind": "train", "input": "bafki",
                    "deadline_ms": 5}, "job_kind"),
    ("job_submit", {"model": "bafkm", "job_kind": "inference", "input": "bafki",
                    "deadline_ms": -5}, "deadline_ms"),
    ("job_submit", {"model": "bafkm", "job_kind": "inference", "input": "bafki",
                    "deadline_ms": 5, "params": {"t": 0.7}}, "no floats"),
    ("job_submit", {"model": "bafkm", "job_kind": "inference", "input": "bafki",
                    "deadline_ms": 5, "params": {"t": "x" * 65}}, "params"),
    ("job_submit", {"model": "bafkm", "job_kind": "inference", "input": "bafki",
                    "deadline_ms": 5, "params": {f"k{i}": i for i in range(9)}}, "1..8"),
    ("job_submit", {"model": "bafkm", "job_kind": "inference", "input": "bafki",
                    "deadline_ms": 5, "params": {}}, "1..8"),
    ("job_result", {"job": JOB, "ok": True, "output": "bafko", "output_sha256": b"x"},
     "output_sha256"),
    ("job_result", {"job": JOB, "ok": False, "output": "bafko", "output_sha256": b""},
     "failure"),
    ("job_result", {"job": JOB, "ok": 1, "output": "bafko", "output_sha256": JOB}, "ok"),
    ("job_accept", {"job": b"short"}, "job must be 32 bytes"),
    ("job_dispute", {}, "expected exactly"),
    ("job_accept", [], "map"),
])
def test_bad_args_are_malformed_naming_the_argument(kind: str, args: Any, match: str) -> None:
    with pytest.raises(TxRejected, match=match) as info:
        decode_tx(encoded_with_args(kind, args), 4096)
    assert info.value.reason_code == "malformed"


def test_optional_args_at_their_default_are_not_canonical() -> None:
    data = encoded_with_args("model_register", {
        "model": "bafkm", "royalty_bps": 1, "price": (1).to_bytes(16, "big"), "teacher": "",
        "teacher_share_bps": 0})
    with pytest.raises(TxRejected, match="teacher must be a CID"):
        decode_tx(data, SIZE_MAX)


def test_constructors_refuse_bad_args_before_signing() -> None:
    with pytest.raises(TxRejected, match="model must be a CID"):
        model_register(HEADER, model="not a cid", royalty_bps=1, price=1)
    with pytest.raises(TxRejected, match="no floats"):
        job_submit(HEADER, model="bafkm", job_kind=JobKind.INFERENCE, input_cid="bafki",
                   deadline_ms=5, max_price=1, params={"t": 0.5})
