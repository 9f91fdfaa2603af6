"""/prsm/job-progress/1.0.0 shapes: what a worker sends is an allow-list of its local
status, and every field a submitter receives is checked before it is shown."""

from __future__ import annotations

import math

import pytest

from prsm_node.errors import PeerProtocolError
from prsm_node.jobs_progress import (
    ERROR_SIZE_MAX,
    ProgressAnswerError,
    build_answer,
    parse_answer,
    parse_request,
)

LOCAL = {"role": "worker", "state": "running", "error": "", "student": "", "wall_seconds": 0.0,
         "progress": {"event": "progress", "pid": 4242, "sandbox": True, "kind": "distill",
                      "phase": "running", "step": 300, "steps": 1000, "loss": 0.25,
                      "device": "cpu"}}


def test_a_request_names_one_job_id_of_32_bytes() -> None:
    assert parse_request("peer", {"job": bytes(32)}) == bytes(32)
    for bad in ({"job": bytes(31)}, {"job": "00" * 32}, {"job": bytes(32), "more": 1}, [1]):
        with pytest.raises(PeerProtocolError):
            parse_request("peer", bad)


def test_the_answer_keeps_only_allowed_progress_keys() -> None:
    answer = build_answer(LOCAL)
    assert answer == {"state": "running", "error": "", "progress": {
        "phase": "running", "step": 300, "steps": 1000, "loss": 0.25, "device": "cpu"}}
    assert parse_answer(answer) == answer  # what a worker sends, a submitter accepts


def test_no_local_job_answers_unknown() -> None:
    assert build_answer(None) == {"state": "unknown", "progress": {}, "error": ""}


def test_a_failed_job_carries_its_reason_capped() -> None:
    failed = LOCAL | {"state": "failed", "error": "job exceeded its cpu limit: " + "x" * 999}
    answer = build_answer(failed)
    assert answer["error"].startswith("job exceeded its cpu limit")
    assert len(answer["error"]) == ERROR_SIZE_MAX


@pytest.mark.parametrize("change", [
    {"state": "hacked"},
    {"error": "x" * (ERROR_SIZE_MAX + 1)},
    {"progress": {"pid": 1}},
    {"progress": {"step": True}},
    {"progress": {"step": -1}},
    {"progress": {"loss": math.nan}},
    {"progress": {"loss": "0.1"}},
    {"progress": {"phase": "p" * 33}},
    {"progress": []},
])
def test_a_malformed_answer_is_refused(change: dict) -> None:
    answer = {"state": "running", "progress": {"step": 1}, "error": ""} | change
    with pytest.raises(ProgressAnswerError):
        parse_answer(answer)
    with pytest.raises(ProgressAnswerError):
        parse_answer(answer | {"extra": 1})
