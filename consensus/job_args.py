"""Per-kind transaction arguments (``TxBody.args``) and their strict, stateless schemas.

Rules:
1. Every transaction body carries ``args``, a msgpack map with str keys. The kinds that
   existed before jobs (transfer, stake, unstake, register_validator) and
   ``worker_unregister`` take the empty map; each job kind has one frozen dataclass here.
2. Decoding is strict: exactly the required keys, optional keys only from a fixed list,
   every value of one type and within a named bound. A failure is ``TxRejected("malformed",
   ...)`` naming the argument. Optional arguments at their default are left out when
   encoding, and ``decode_tx`` re-encodes and compares, so one transaction still has one
   byte string (a redundant ``"teacher": ""`` is refused as non-canonical).
3. No floats anywhere (msgpack may decode one: it is refused like any wrong type); amounts
   (prices) are 16 big-endian bytes as in ``TxBody``; times are integer milliseconds of
   block time.
4. Bounds here are stateless: they keep the largest argument map of each kind inside
   ``Params.tx_size_max`` (1 KiB by default). Bounds that need state (how many models or
   workers the ledger holds) are ``Params`` fields, checked by ``LedgerState.check_tx``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from consensus.codec import HASH_SIZE, amount_from_bytes, amount_to_bytes
from consensus.errors import TxRejected

CID_LENGTH_MAX = 90
"""A CIDv1 (raw, sha2-256: what storage/ makes) is 59 base32 characters; 90 leaves room for
other bases and digests up to 384 bits, and keeps the largest worker_register (below)
inside the default 1 KiB ``tx_size_max``."""
WORKER_MODELS_MAX = 8
"""Models one worker_register lists: 8 x 90-character CIDs plus the body is ~1,010 B."""
JOB_PARAMS_MAX = 8
"""Entries in a job's params map: hints (seed, max tokens, temperature as an integer
per-mille), not payloads; the input itself is a CID."""
JOB_PARAM_KEY_LENGTH_MAX = 32
JOB_PARAM_VALUE_SIZE_MAX = 64
"""Characters of a str value, bytes of a bytes value: a short hint, never data."""
BPS_MAX = 10_000
"""Basis points: 10,000 is 100 %."""
TIME_MS_MAX = 2**63 - 1
INT_PARAM_MIN, INT_PARAM_MAX = -(2**63), 2**63 - 1


class JobKind(enum.Enum):
    """What a job asks a worker to do (DESIGN.md, "Jobs")."""

    INFERENCE = "inference"
    DISTILL = "distill"


ParamValue = int | str | bytes | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NoArgs:
    """The empty argument map of the kinds that need none."""

    def to_plain(self) -> dict[str, Any]:
        return {}


NO_ARGS = NoArgs()


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRegisterArgs:
    """Register (or, by its owner, re-price) the model whose manifest has CID ``model``.

    ``royalty_bps`` of each job's price goes to the owner; when ``teacher`` names a
    registered model (a distilled student), ``teacher_share_bps`` of that royalty goes to
    the teacher model's owner instead."""

    model: str
    royalty_bps: int
    price: int
    """Price per job in base units: what a job_submit escrows and pays."""
    teacher: str = ""
    teacher_share_bps: int = 0

    def to_plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = {"model": self.model, "royalty_bps": self.royalty_bps,
                                 "price": amount_to_bytes(self.price)}
        if self.teacher:
            plain |= {"teacher": self.teacher, "teacher_share_bps": self.teacher_share_bps}
        return plain


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRegisterArgs:
    """Serve ``models`` (sorted, no repeats; replaces the previous list); the transaction's
    ``amount`` is added to the worker stake."""

    models: tuple[str, ...]

    def to_plain(self) -> dict[str, Any]:
        return {"models": list(self.models)}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSubmitArgs:
    """Ask for a job; the transaction's ``amount`` is the most the submitter will pay."""

    model: str
    job_kind: JobKind
    input: str
    """CID of the input (a prompt, a dataset manifest)."""
    deadline_ms: int
    """Block time by which a result must be posted; after it the escrow is refunded."""
    params: tuple[tuple[str, ParamValue], ...] = ()
    """Sorted by key; hints for the worker, opaque to the ledger."""

    def to_plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = {"model": self.model, "job_kind": self.job_kind.value,
                                 "input": self.input, "deadline_ms": self.deadline_ms}
        if self.params:
            plain["params"] = dict(self.params)
        return plain


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResultArgs:
    """A worker's (or a verifier's) result: ``ok`` with the output's CID and SHA-256, or a
    failure (``ok`` false, empty output) that passes the job on."""

    job: bytes
    ok: bool
    output: str = ""
    output_sha256: bytes = b""

    def to_plain(self) -> dict[str, Any]:
        return {"job": self.job, "ok": self.ok, "output": self.output,
                "output_sha256": self.output_sha256}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRefArgs:
    """``job_accept`` and ``job_dispute``: which job (its id, the job_submit tx hash)."""

    job: bytes

    def to_plain(self) -> dict[str, Any]:
        return {"job": self.job}


TxArgs = NoArgs | ModelRegisterArgs | WorkerRegisterArgs | JobSubmitArgs | JobResultArgs \
    | JobRefArgs


# -- decoding ---------------------------------------------------------------------------------

def _malformed(message: str) -> TxRejected:
    return TxRejected("malformed", f"args: {message}")


def _keys(plain: Any, required: frozenset[str], optional: frozenset[str] = frozenset()
          ) -> dict[str, Any]:
    if not isinstance(plain, dict) or any(type(k) is not str for k in plain):
        raise _malformed("must be a map with string keys")
    keys = set(plain)
    if not required <= keys or not keys <= required | optional:
        expected = ", ".join(sorted(required)) + (
            f" (optional: {', '.join(sorted(optional))})" if optional else "")
        raise _malformed(f"expected exactly {expected}; got {', '.join(sorted(keys)) or '{}'}")
    return plain


def cid_arg(value: Any, name: str) -> str:
    """A CID as the ledger stores it: 1..CID_LENGTH_MAX ASCII letters and digits (multibase
    base32 and base58btc use nothing else), so no Unicode lookalikes in a model name."""
    if (type(value) is not str or not 0 < len(value) <= CID_LENGTH_MAX or not value.isascii()
            or not value.isalnum()):
        raise _malformed(f"{name} must be a CID of 1..{CID_LENGTH_MAX} ASCII letters and digits")
    return value


def _int_arg(value: Any, name: str, maximum: int) -> int:
    if type(value) is not int or not 0 <= value <= maximum:
        raise _malformed(f"{name} must be an integer in 0..{maximum}")
    return value


def _amount_arg(value: Any, name: str) -> int:
    try:
        return amount_from_bytes(value)
    except ValueError as error:
        raise _malformed(f"{name} must be 16 big-endian bytes") from error


def _hash_arg(value: Any, name: str) -> bytes:
    if type(value) is not bytes or len(value) != HASH_SIZE:
        raise _malformed(f"{name} must be {HASH_SIZE} bytes")
    return value


def decode_no_args(plain: Any) -> NoArgs:
    _keys(plain, frozenset())
    return NO_ARGS


def decode_model_register(plain: Any) -> ModelRegisterArgs:
    args = _keys(plain, frozenset({"model", "royalty_bps", "price"}),
                 frozenset({"teacher", "teacher_share_bps"}))
    model = cid_arg(args["model"], "model")
    teacher, share = "", 0
    if "teacher" in args or "teacher_share_bps" in args:
        if "teacher" not in args or "teacher_share_bps" not in args:
            raise _malformed("teacher and teacher_share_bps come together")
        teacher = cid_arg(args["teacher"], "teacher")
        share = _int_arg(args["teacher_share_bps"], "teacher_share_bps", BPS_MAX)
        if teacher == model:
            raise _malformed("a model cannot be its own teacher")
    return ModelRegisterArgs(model=model,
                             royalty_bps=_int_arg(args["royalty_bps"], "royalty_bps", BPS_MAX),
                             price=_amount_arg(args["price"], "price"), teacher=teacher,
                             teacher_share_bps=share)


def decode_worker_register(plain: Any) -> WorkerRegisterArgs:
    models = _keys(plain, frozenset({"models"}))["models"]
    if not isinstance(models, tuple | list) or not 0 < len(models) <= WORKER_MODELS_MAX:
        raise _malformed(f"models must be a list of 1..{WORKER_MODELS_MAX} model CIDs")
    cids = tuple(cid_arg(m, f"models[{i}]") for i, m in enumerate(models))
    if list(cids) != sorted(set(cids)):
        raise _malformed("models must be sorted and without repeats")
    return WorkerRegisterArgs(models=cids)


def _param_value(key: str, value: Any) -> ParamValue:
    kind = type(value)
    if kind is bool:
        return value
    if kind is int and INT_PARAM_MIN <= value <= INT_PARAM_MAX:
        return value
    if kind in (str, bytes) and len(value) <= JOB_PARAM_VALUE_SIZE_MAX:
        return value
    raise _malformed(f"params[{key!r}] must be a bool, a 64-bit integer, or a str or bytes of "
                     f"at most {JOB_PARAM_VALUE_SIZE_MAX} (no floats)")


def _job_params(plain: Any) -> tuple[tuple[str, ParamValue], ...]:
    if not isinstance(plain, dict) or not 0 < len(plain) <= JOB_PARAMS_MAX:
        raise _malformed(f"params must be a map of 1..{JOB_PARAMS_MAX} entries (or absent)")
    for key in plain:
        if type(key) is not str or not 0 < len(key) <= JOB_PARAM_KEY_LENGTH_MAX:
            raise _malformed(f"params keys must be strings of 1..{JOB_PARAM_KEY_LENGTH_MAX}")
    return tuple((key, _param_value(key, plain[key])) for key in sorted(plain))


def decode_job_submit(plain: Any) -> JobSubmitArgs:
    args = _keys(plain, frozenset({"model", "job_kind", "input", "deadline_ms"}),
                 frozenset({"params"}))
    try:
        job_kind = JobKind(args["job_kind"])
    except (ValueError, TypeError) as error:
        raise _malformed(f"job_kind must be one of {[k.value for k in JobKind]}") from error
    return JobSubmitArgs(model=cid_arg(args["model"], "model"), job_kind=job_kind,
                         input=cid_arg(args["input"], "input"),
                         deadline_ms=_int_arg(args["deadline_ms"], "deadline_ms", TIME_MS_MAX),
                         params=_job_params(args["params"]) if "params" in args else ())


def decode_job_result(plain: Any) -> JobResultArgs:
    args = _keys(plain, frozenset({"job", "ok", "output", "output_sha256"}))
    job, ok = _hash_arg(args["job"], "job"), args["ok"]
    if type(ok) is not bool:
        raise _malformed("ok must be a boolean")
    if not ok:
        if args["output"] != "" or args["output_sha256"] != b"":
            raise _malformed("a failure result (ok false) has an empty output and output_sha256")
        return JobResultArgs(job=job, ok=False)
    return JobResultArgs(job=job, ok=True, output=cid_arg(args["output"], "output"),
                         output_sha256=_hash_arg(args["output_sha256"], "output_sha256"))


def decode_job_ref(plain: Any) -> JobRefArgs:
    return JobRefArgs(job=_hash_arg(_keys(plain, frozenset({"job"}))["job"], "job"))
