"""Job params survive the ledger's narrow value types, and a job's seed is its id's alone."""

from __future__ import annotations

import pytest

from consensus.job_args import decode_job_submit
from prsm_node.jobs.errors import JobSpecError
from prsm_node.jobs_records import decode_params, encode_params, input_name, job_seed

CID = "bafkreifvfjw3s4qpljq3pa5pvskij4fn7lqkxlcxj3yjhgyjsjtvcysfai"
DISTILL = {"student": {"architecture": "mlp", "config": {"hidden": [8]}}, "steps": 300,
           "temperature": 2.0, "learning_rate": 0.01, "batch_size": 64, "exact": True}


def test_distill_params_round_trip_through_the_ledger_decoder() -> None:
    encoded = encode_params(DISTILL)
    args = decode_job_submit({"model": CID, "job_kind": "distill", "deadline_ms": 1,
                              "input": CID, "params": encoded})
    assert decode_params(args.params) == DISTILL


def test_a_value_too_long_for_the_ledger_is_refused_naming_its_key() -> None:
    with pytest.raises(JobSpecError, match="recipe"):
        encode_params({"recipe": {"kind": "gaussian", "samples": 10**9, "seed": 1,
                                  "padding": "x" * 64}})


def test_the_seed_depends_on_the_job_id_only() -> None:
    assert job_seed(b"\x01" * 32) == job_seed(b"\x01" * 32) != job_seed(b"\x02" * 32)
    assert 0 <= job_seed(b"\xff" * 32) < 1 << 63


def test_input_names_follow_kind_and_task() -> None:
    assert input_name("inference", "classifier") == "input.safetensors"
    assert input_name("inference", "language_model") == "prompts.json"
    assert input_name("distill", "classifier") == "dataset.safetensors"
