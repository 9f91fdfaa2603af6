"""Typed errors of the job runtime, by whose fault they are (STYLE.md rule 5).

- ``ModelError`` and its subclasses: a model (architecture, config, weights) is malformed
  or does not match its manifest. The model came from the network or the operator, so this
  is never our bug: it is reported, and the job fails.
- ``JobSpecError``: a job request or its parameters are invalid (the submitter's fault).
- ``JobRefused``: this node does not take the job now (queue full, kind not allowed).
- ``JobError`` and its subclasses: a job that ran and did not produce a result: the worker
  hit a limit (``JobLimitExceeded``), reported an error (``JobFailed``), or was cancelled.

Anything else is our bug and crashes.
"""

from __future__ import annotations


class ModelError(Exception):
    """A model's architecture, config or weights are malformed."""


class ModelConfigError(ModelError):
    """An architecture config is invalid; names the architecture, the key and the reason."""

    def __init__(self, architecture: str, key: str | None, reason: str) -> None:
        self.architecture = architecture
        self.key = key
        self.reason = reason
        where = f"{architecture}.{key}" if key else architecture
        super().__init__(f"model config {where}: {reason}")


class WeightsMismatchError(ModelError):
    """A weight file disagrees with the manifest or the architecture; names the tensor."""

    def __init__(self, tensor: str | None, reason: str) -> None:
        self.tensor = tensor
        self.reason = reason
        super().__init__(f"tensor {tensor!r}: {reason}" if tensor else reason)


class TensorFileError(ModelError):
    """Bytes that are not a well-formed safetensors file (or break one of our caps)."""


class JobSpecError(Exception):
    """A job request or its parameters are invalid; names the field."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"job {field}: {reason}")


class JobRefused(Exception):
    """The runner does not take this job now (queue full, kind not allowed here)."""


class UnknownJob(KeyError):
    """No job with this id (never submitted, or its record was evicted)."""


class JobError(Exception):
    """A job ran (or was queued) and gives no result."""


class JobLimitExceeded(JobError):
    """The worker passed a resource limit and was stopped: ``limit`` is cpu, memory or wall."""

    LIMITS = ("cpu", "memory", "wall")

    def __init__(self, limit: str, detail: str) -> None:
        assert limit in self.LIMITS, limit
        self.limit = limit
        self.detail = detail
        super().__init__(f"job exceeded its {limit} limit: {detail}")


class JobFailed(JobError):
    """The worker reported an error (``error_type`` is the exception's class name) or died."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(f"job failed: {error_type}: {message}")


class JobCancelled(JobError):
    """The job was cancelled before it finished."""
