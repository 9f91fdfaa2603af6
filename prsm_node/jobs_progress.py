"""/prsm/job-progress/1.0.0: the submitter's node asks the assigned worker how its job goes.

The ledger knows only that a job is assigned; the progress (phase, step, loss) lives in
the worker node's runner (jobs_service.LocalJob). One framed request over the wire layer
(prsm_node/net/wire.py):

  {"job": <32-byte job id>}
    -> {"state": s, "progress": {...}, "error": text}
       s: unknown, fetching, running, posting, posted or failed; progress holds only
       PROGRESS_KEYS (phase, step, steps, loss, device); error is the worker's reason for
       a failed job (e.g. "job exceeded its cpu limit: ...") or empty.

Rules:
1. The worker answers only the job's submitter: the asking peer's id must be the peer id
   of the ledger's ``submitter`` key (libp2p authenticates peer ids). Anyone else, and a
   job this node does not work on, gets ``{"state": "unknown"}``: nothing says which.
2. Every answer is built from an allow-list, and every field of an answer received is
   checked (type, range, ``*_MAX`` sizes) before it reaches the control API; a malformed
   request or answer is the peer's fault (scored), never an exception out of here.
3. Asking is bounded: one request, at most ``ASK_WAIT_S``; a worker that does not answer
   gives ``{"error": reason}``, and ``job status`` still shows the ledger's record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import structlog
import trio

from consensus.job_records import Job
from prsm_node.errors import PeerProtocolError
from prsm_node.ledger_service import LedgerService, peer_id_of_key
from prsm_node.net.wire import RequestFailed, Wire

log = structlog.get_logger(__name__)

PROTOCOL = "/prsm/job-progress/1.0.0"
JOB_ID_SIZE = 32
STATES = ("unknown", "fetching", "running", "posting", "posted", "failed")
PROGRESS_KEYS = ("phase", "step", "steps", "loss", "device")
TEXT_SIZE_MAX = 32
"""phase and device are short words (``running``, ``cuda``)."""
ERROR_SIZE_MAX = 400
"""As much of the reason as the worker keeps itself (jobs_service.LocalJob.error)."""
STEP_MAX = 1 << 31
ASK_WAIT_S = 5.0
"""A control call waits this long for the worker at most: a round trip on an open stream is
1.5-3 ms (wire.py), a first dial well under a second; past 5 s the worker is not healthy."""

LocalStatus = Callable[[bytes], Mapping[str, Any] | None]


class ProgressAnswerError(Exception):
    """A worker's answer that breaks the protocol (rule 2)."""


def parse_request(peer: str, payload: Any) -> bytes:
    if type(payload) is not dict or set(payload) != {"job"}:
        raise PeerProtocolError(peer, f"{PROTOCOL}: request is not {{'job': id}}")
    job_id = payload["job"]
    if type(job_id) is not bytes or len(job_id) != JOB_ID_SIZE:
        raise PeerProtocolError(peer, f"{PROTOCOL}: job id is not {JOB_ID_SIZE} bytes")
    return job_id


def build_answer(local: Mapping[str, Any] | None) -> dict[str, Any]:
    """Rule 2, worker side: only the allow-listed part of ``JobsService.local_status``."""
    if local is None or local.get("state") not in STATES:
        return {"state": "unknown", "progress": {}, "error": ""}
    progress = local.get("progress") or {}
    kept = {key: progress[key] for key in PROGRESS_KEYS if key in progress}
    answer = {"state": local["state"], "progress": kept,
              "error": str(local.get("error") or "")[:ERROR_SIZE_MAX]}
    try:
        return parse_answer(answer)  # what we send passes the check a receiver makes
    except ProgressAnswerError as error:
        log.warning("jobs.progress_not_sent", reason=str(error))
        return {"state": local["state"], "progress": {}, "error": answer["error"]}


def _check_progress(progress: Any) -> dict[str, Any]:
    if type(progress) is not dict or not set(progress) <= set(PROGRESS_KEYS):
        raise ProgressAnswerError("progress is not a map of known keys")
    for key in ("phase", "device"):
        value = progress.get(key, "")
        if type(value) is not str or len(value) > TEXT_SIZE_MAX:
            raise ProgressAnswerError(f"progress {key} is not a short text")
    for key in ("step", "steps"):
        value = progress.get(key, 0)
        if type(value) is not int or not 0 <= value <= STEP_MAX:
            raise ProgressAnswerError(f"progress {key} is not a step count")
    loss = progress.get("loss")
    if loss is not None and (type(loss) not in (int, float) or not math.isfinite(loss)):
        raise ProgressAnswerError("progress loss is not a finite number or null")
    return dict(progress)


def parse_answer(payload: Any) -> dict[str, Any]:
    """Rule 2, submitter side."""
    if type(payload) is not dict or set(payload) != {"state", "progress", "error"}:
        raise ProgressAnswerError("answer is not {state, progress, error}")
    if payload["state"] not in STATES:
        raise ProgressAnswerError(f"unknown state {str(payload['state'])[:TEXT_SIZE_MAX]!r}")
    error = payload["error"]
    if type(error) is not str or len(error) > ERROR_SIZE_MAX:
        raise ProgressAnswerError(f"error is not a text of at most {ERROR_SIZE_MAX}")
    return {"state": payload["state"], "progress": _check_progress(payload["progress"]),
            "error": error}


class JobProgress:
    """Both ends of the protocol for one node."""

    def __init__(self, *, wire: Wire, ledger: LedgerService, local_status: LocalStatus,
                 penalise: Callable[[str, str], None]) -> None:
        self._wire, self._ledger = wire, ledger
        self._local_status, self._penalise = local_status, penalise
        self.counters = {"answered": 0, "asked": 0, "ask_failed": 0}

    def register(self) -> None:
        self._wire.register(PROTOCOL, self._serve)

    async def _serve(self, peer: str, payload: Any) -> dict[str, Any]:
        job_id = parse_request(peer, payload)
        job = self._ledger.ledger().job(job_id)
        self.counters["answered"] += 1
        if job is None or peer_id_of_key(job.submitter) != peer:  # rule 1
            return build_answer(None)
        return build_answer(self._local_status(job_id))

    async def ask(self, job_id: bytes, job: Job) -> dict[str, Any]:
        """The assignee's answer (``parse_answer``), or ``{"error": why there is none}``."""
        peer = peer_id_of_key(job.assignee)
        self.counters["asked"] += 1
        reason = f"no answer within {ASK_WAIT_S:g} s"
        with trio.move_on_after(ASK_WAIT_S):
            try:
                return parse_answer(await self._wire.request(peer, PROTOCOL, {"job": job_id}))
            except RequestFailed as error:
                reason = error.reason
            except ProgressAnswerError as error:
                self._penalise(peer, f"{PROTOCOL}: {error}")
                reason = f"malformed answer: {error}"
        self.counters["ask_failed"] += 1
        return {"error": reason}
