"""How a job crosses the ledger: its params, its seed, its input file name, its JSON view.

Rules:
1. Ledger params hold only bools, 64-bit integers and short strings/bytes (no floats, no
   maps: consensus/job_args.py). A job's JSON params go on the ledger as: bool and int
   unchanged, everything else (floats, strings, objects) as its compact JSON text. Reading
   back, a string is parsed as JSON. ``encode_params`` refuses what would not fit, naming
   the key, before anything is signed.
2. The seed is a function of the job id alone, so the assignee and a dispute's verifiers
   run the same computation and (same CPU, one thread) produce the same bytes.
3. The input CID names one file; its name inside the job follows from the kind and the
   model's task (spec.py): a classifier's tensors, a language model's prompts, a dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from hashlib import sha256
from typing import Any

from consensus.job_args import JOB_PARAM_VALUE_SIZE_MAX, JOB_PARAMS_MAX, ParamValue
from consensus.job_records import Job
from prsm_node.jobs.architectures import CLASSIFIER
from prsm_node.jobs.errors import JobSpecError
from prsm_node.jobs.spec import DATASET, INPUT_TENSORS, PROMPTS, SEED_MAX

SEED_DOMAIN = b"prsm-job-seed/1"


def encode_params(params: Mapping[str, Any]) -> dict[str, ParamValue]:
    """JSON params to ledger params (rule 1); raises JobSpecError naming the key."""
    if len(params) > JOB_PARAMS_MAX:
        raise JobSpecError("params", f"at most {JOB_PARAMS_MAX} keys fit on the ledger")
    encoded: dict[str, ParamValue] = {}
    for key, value in params.items():
        if isinstance(value, bool | int):
            encoded[key] = value
            continue
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        if len(text) > JOB_PARAM_VALUE_SIZE_MAX:
            raise JobSpecError(key, f"{text!r} is longer than the ledger's "
                                    f"{JOB_PARAM_VALUE_SIZE_MAX} characters per value")
        encoded[key] = text
    return encoded


def decode_params(params: tuple[tuple[str, ParamValue], ...]) -> dict[str, Any]:
    """Ledger params back to JSON params (rule 1); raises JobSpecError on a bad value."""
    decoded: dict[str, Any] = {}
    for key, value in params:
        if isinstance(value, str):
            try:
                decoded[key] = json.loads(value)
            except ValueError:
                raise JobSpecError(key, f"{value!r} is not JSON text") from None
        elif isinstance(value, bytes):
            raise JobSpecError(key, "bytes params are not used by any job kind")
        else:
            decoded[key] = value
    return decoded


def job_seed(job_id: bytes) -> int:
    """The job's seed (rule 2)."""
    return int.from_bytes(sha256(SEED_DOMAIN + job_id).digest()[:8], "big") & SEED_MAX


def input_name(job_kind: str, task: str) -> str:
    """The file name the job's input CID is given in the work dir (rule 3)."""
    if job_kind == "distill":
        return DATASET
    return INPUT_TENSORS if task == CLASSIFIER else PROMPTS


def job_json(job_id: bytes, job: Job) -> dict[str, Any]:
    """The ledger's record of a job as the control API shows it (amounts as strings)."""
    return {
        "job_id": job_id.hex(),
        "status": job.status.value,
        "kind": job.job_kind.value,
        "model": job.model,
        "input": job.input,
        "params": decode_params_lenient(job.params),
        "submitter": job.submitter.hex(),
        "assignee": job.assignee.hex(),
        "turn": job.turn,
        "candidates": [key.hex() for key in job.candidates],
        "price_units": str(job.price),
        "worker_pay_units": str(job.worker_pay),
        "owner_pay_units": str(job.owner_pay),
        "teacher_pay_units": str(job.teacher_pay),
        "fee_units": str(job.fee),
        "escrow_units": str(job.escrow),
        "bond_units": str(job.bond),
        "submitted_ms": job.submitted_ms,
        "deadline_ms": job.deadline_ms,
        "timer_ms": job.timer_ms,
        "output": job.output,
        "output_sha256": job.output_sha256.hex(),
        "verifiers": [key.hex() for key in job.verifiers],
        "votes": [[key.hex(), digest.hex()] for key, digest in job.votes],
        "failures": job.failures,
        "outcome": job.outcome.value,
    }


def decode_params_lenient(params: tuple[tuple[str, ParamValue], ...]) -> dict[str, Any]:
    """For display: what ``decode_params`` gives, or the raw values if it refuses."""
    try:
        return decode_params(params)
    except JobSpecError:
        return {key: value.hex() if isinstance(value, bytes) else value
                for key, value in params}
