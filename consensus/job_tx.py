"""Constructors of job-market transaction bodies, for the node and the CLI to sign.

Rules:
1. Each returns a ``TxBody`` that ``decode_tx`` accepts: the arguments are run through the
   kind's strict decoder before the body is built, so a bad argument fails here, with the
   same ``TxRejected("malformed", ...)`` the network would give, before anything is signed.
2. They read no state: the caller supplies the nonce and fee (``LedgerService`` tracks the
   next nonce) and, for a dispute, the bond (``dispute_bond``). Amounts are base units.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from consensus.job_args import (
    NO_ARGS,
    JobKind,
    JobRefArgs,
    JobResultArgs,
    JobSubmitArgs,
    ModelRegisterArgs,
    ParamValue,
    TxArgs,
    WorkerRegisterArgs,
)
from consensus.job_records import dispute_bond
from consensus.tx import ARGS_SCHEMA, TxBody, TxKind

__all__ = ["TxHeader", "dispute_bond", "job_accept", "job_dispute", "job_failure",
           "job_result", "job_submit", "model_register", "worker_register",
           "worker_unregister"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TxHeader:
    """What every body needs besides its kind, amount and args."""

    chain_id: str
    sender: bytes
    nonce: int
    fee: int


def _body(header: TxHeader, kind: TxKind, args: TxArgs, amount: int = 0) -> TxBody:
    checked = ARGS_SCHEMA[kind][1](args.to_plain())  # raises TxRejected("malformed")
    assert checked == args, "the decoder must give back what was encoded"
    return TxBody(chain_id=header.chain_id, kind=kind, sender=header.sender,
                  nonce=header.nonce, fee=header.fee, amount=amount, args=args)


def model_register(header: TxHeader, *, model: str, royalty_bps: int, price: int,
                   teacher: str = "", teacher_share_bps: int = 0) -> TxBody:
    """Register a model manifest CID (or re-price one the sender owns)."""
    return _body(header, TxKind.MODEL_REGISTER, ModelRegisterArgs(
        model=model, royalty_bps=royalty_bps, price=price, teacher=teacher,
        teacher_share_bps=teacher_share_bps))


def worker_register(header: TxHeader, *, models: list[str] | tuple[str, ...], stake: int = 0
                    ) -> TxBody:
    """Serve ``models`` (replacing the list) and add ``stake`` to the worker stake."""
    return _body(header, TxKind.WORKER_REGISTER,
                 WorkerRegisterArgs(models=tuple(sorted(set(models)))), stake)


def worker_unregister(header: TxHeader, *, amount: int) -> TxBody:
    """Withdraw ``amount`` of worker stake (unbonding); at zero the worker is gone."""
    return _body(header, TxKind.WORKER_UNREGISTER, NO_ARGS, amount)


def job_submit(header: TxHeader, *, model: str, job_kind: JobKind, input_cid: str,
               deadline_ms: int, max_price: int,
               params: Mapping[str, ParamValue] | None = None) -> TxBody:
    """Ask for a job; the model's price (at most ``max_price``) goes into escrow. The job
    id is the hash of the signed body (``SignedTx.tx_hash``)."""
    return _body(header, TxKind.JOB_SUBMIT, JobSubmitArgs(
        model=model, job_kind=job_kind, input=input_cid, deadline_ms=deadline_ms,
        params=tuple(sorted((params or {}).items()))), max_price)


def job_result(header: TxHeader, *, job: bytes, output_cid: str, output_sha256: bytes
               ) -> TxBody:
    """A worker's (or verifier's) output: its CID and the SHA-256 of its bytes."""
    return _body(header, TxKind.JOB_RESULT, JobResultArgs(
        job=job, ok=True, output=output_cid, output_sha256=output_sha256))


def job_failure(header: TxHeader, *, job: bytes) -> TxBody:
    """The worker could not run the job: it passes to the next ranked worker."""
    return _body(header, TxKind.JOB_RESULT, JobResultArgs(job=job, ok=False))


def job_accept(header: TxHeader, *, job: bytes) -> TxBody:
    """The submitter accepts the result: the escrow is paid out at once."""
    return _body(header, TxKind.JOB_ACCEPT, JobRefArgs(job=job))


def job_dispute(header: TxHeader, *, job: bytes, bond: int) -> TxBody:
    """The submitter disputes the result, bonding ``bond`` (``dispute_bond``)."""
    return _body(header, TxKind.JOB_DISPUTE, JobRefArgs(job=job), bond)
