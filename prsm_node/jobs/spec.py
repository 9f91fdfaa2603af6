"""Job specs: what a job asks for, checked the same way by the node and by the worker.

Rules:
1. A job is ``kind`` + models by role + input files by name + ``params`` (a JSON object) +
   ``seed``. ``check_params`` fills the defaults and refuses unknown keys, wrong types and
   out-of-range values, naming the field; the node calls it before it queues a job, the
   worker again on what it reads (it trusts nothing from the work dir it did not check).
2. The work dir layout is fixed here and nowhere else: ``job.json``, ``models/<role>/``
   (``manifest.bin`` plus the weight files under their manifest names), ``inputs/``,
   ``outputs/``, ``tmp/``. Only names from this module and from a checked manifest are
   ever joined to the work dir.

Kinds, their models, inputs and params (defaults in brackets):

- ``inference``, model role ``model``. A classifier takes ``input.safetensors`` holding
  ``input`` (F32, [N, *input shape]) and returns ``output.safetensors`` with ``logits``
  (F32, [N, classes]). A language model takes ``prompts.json`` (a JSON list of strings)
  and returns ``tokens`` (I64, [N, max_new_tokens]) and ``logprobs`` (F32, same shape).
  Params: ``batch_size`` [64]; language model only: ``max_new_tokens`` [32],
  ``temperature`` [0.0: greedy], ``top_k`` [0: all].
- ``distill``, model role ``teacher``. Input ``dataset.safetensors`` (``input``, and
  ``labels`` I64 [N] for a classifier when known) or a ``recipe`` for synthetic inputs.
  Returns ``student.safetensors``. Params: ``student`` {"architecture", "config"},
  ``steps``, ``temperature`` [2.0], ``learning_rate`` [0.01], ``batch_size`` [64],
  ``hard_label_weight`` [0.5, used when labels exist], ``recipe`` {"kind": gaussian |
  uniform (classifiers), bytes | text (language models), "samples", "seed"},
  ``progress_every`` [steps / 100].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prsm_node.jobs.architectures import (
    CLASSIFIER,
    architecture,
    output_size,
    validate_config,
)
from prsm_node.jobs.errors import JobSpecError, ModelError

SPEC_VERSION = 1
SPEC_FILE = "job.json"
SPEC_SIZE_MAX = 1024 * 1024
MODELS_DIR = "models"
MANIFEST_FILE = "manifest.bin"
INPUTS_DIR = "inputs"
OUTPUTS_DIR = "outputs"
TMP_DIR = "tmp"

INPUT_TENSORS = "input.safetensors"
PROMPTS = "prompts.json"
DATASET = "dataset.safetensors"
OUTPUT = "output.safetensors"
STUDENT = "student.safetensors"

MODEL_ROLES = {"inference": ("model",), "distill": ("teacher",)}
OUTPUTS = {"inference": (OUTPUT,), "distill": (STUDENT,)}
DEVICES = ("auto", "cpu", "cuda")
SEED_MAX = (1 << 63) - 1
PROMPTS_MAX = 4096
RECIPE_SAMPLES_MAX = 1 << 26
"""67 M synthetic samples: a recipe is a few bytes that can ask for gigabytes, so the
memory limit still has the last word; this bound only refuses the absurd."""
STEPS_MAX = 10_000_000
CPU_HARD_GRACE_SECONDS = 2
"""Between RLIMIT_CPU's soft limit (SIGXCPU) and its hard limit (SIGKILL)."""


REQUIRED: Any = object()


def _field(params: Mapping[str, Any], key: str, default: Any, low: float, high: float,
           *, integer: bool, prefix: str = "params") -> Any:
    """An int (``integer``) or a finite float in [low, high]; ``REQUIRED`` has no default."""
    name = f"{prefix}.{key}"
    if key not in params and default is REQUIRED:
        raise JobSpecError(name, "is required")
    value = params.get(key, default)
    if integer and type(value) is not int:
        raise JobSpecError(name, f"must be an integer, got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise JobSpecError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise JobSpecError(name, f"must be between {low} and {high}")
    return value if integer else float(value)


def _integer(params: Mapping[str, Any], key: str, default: Any, low: int, high: int,
             *, prefix: str = "params") -> int:
    return _field(params, key, default, low, high, integer=True, prefix=prefix)


def _number(params: Mapping[str, Any], key: str, default: Any, low: float, high: float,
            ) -> float:
    return _field(params, key, default, low, high, integer=False)


def _known_keys(params: Mapping[str, Any], known: set[str], prefix: str) -> None:
    if not isinstance(params, Mapping):
        raise JobSpecError(prefix, "must be a JSON object")
    unknown = sorted(set(params) - known)
    if unknown:
        raise JobSpecError(f"{prefix}.{unknown[0]}", f"unknown key (known: "
                           f"{', '.join(sorted(known))})")


def check_inference_params(task: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if task == CLASSIFIER:
        _known_keys(params, {"batch_size"}, "params")
        return {"batch_size": _integer(params, "batch_size", 64, 1, 4096)}
    _known_keys(params, {"batch_size", "max_new_tokens", "temperature", "top_k"}, "params")
    return {
        "batch_size": _integer(params, "batch_size", 64, 1, 4096),
        "max_new_tokens": _integer(params, "max_new_tokens", 32, 1, 4096),
        "temperature": _number(params, "temperature", 0.0, 0.0, 100.0),
        "top_k": _integer(params, "top_k", 0, 0, 256),
    }


def _check_recipe(raw: Any, task: str) -> dict[str, Any]:
    kinds = ("gaussian", "uniform") if task == CLASSIFIER else ("bytes", "text")
    _known_keys(raw, {"kind", "samples", "seed"}, "params.recipe")
    if raw.get("kind") not in kinds:
        raise JobSpecError("params.recipe.kind", f"must be one of {', '.join(kinds)}")
    return {"kind": raw["kind"],
            "samples": _integer(raw, "samples", REQUIRED, 1, RECIPE_SAMPLES_MAX,
                                prefix="params.recipe"),
            "seed": _integer(raw, "seed", 0, 0, SEED_MAX, prefix="params.recipe")}


def _check_student(raw: Any, teacher_architecture: str,
                   teacher_config: Mapping[str, Any]) -> dict[str, Any]:
    _known_keys(raw, {"architecture", "config"}, "params.student")
    try:
        config = validate_config(raw.get("architecture", ""), raw.get("config", {}))
    except ModelError as error:
        raise JobSpecError("params.student", str(error)) from None
    student = raw["architecture"]
    if architecture(student).task != architecture(teacher_architecture).task:
        raise JobSpecError("params.student.architecture", "must do the teacher's task")
    if output_size(student, config) != output_size(teacher_architecture, teacher_config):
        raise JobSpecError("params.student.config", "must have the teacher's output size")
    return {"architecture": student, "config": config}


def check_distill_params(teacher_architecture: str, teacher_config: Mapping[str, Any],
                         params: Mapping[str, Any], *, has_dataset: bool) -> dict[str, Any]:
    known = {"student", "steps", "temperature", "learning_rate", "batch_size",
             "hard_label_weight", "recipe", "progress_every"}
    _known_keys(params, known, "params")
    task = architecture(teacher_architecture).task
    if has_dataset == (params.get("recipe") is not None):
        raise JobSpecError("params.recipe", "give either a dataset input or a recipe")
    steps = _integer(params, "steps", REQUIRED, 1, STEPS_MAX)
    return {
        "student": _check_student(params.get("student"), teacher_architecture, teacher_config),
        "steps": steps,
        "temperature": _number(params, "temperature", 2.0, 0.05, 100.0),
        "learning_rate": _number(params, "learning_rate", 0.01, 1e-8, 10.0),
        "batch_size": _integer(params, "batch_size", 64, 1, 65_536),
        "hard_label_weight": _number(params, "hard_label_weight", 0.5, 0.0, 1.0),
        "recipe": None if has_dataset else _check_recipe(params["recipe"], task),
        "progress_every": _integer(params, "progress_every", max(1, steps // 100), 1,
                                   STEPS_MAX),
    }


def required_inputs(kind: str, task: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, allowed) input file names for a job of ``kind`` on a ``task`` model."""
    if kind == "inference":
        name = INPUT_TENSORS if task == CLASSIFIER else PROMPTS
        return frozenset({name}), frozenset({name})
    return frozenset(), frozenset({DATASET})


def check_params(kind: str, models: Mapping[str, tuple[str, Mapping[str, Any]]],
                 input_names: set[str] | frozenset[str],
                 params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a job's kind, model roles, input names and params (rule 1); ``models`` maps
    each role to its (architecture, complete config). Returns the params with defaults."""
    if kind not in MODEL_ROLES:
        raise JobSpecError("kind", f"must be one of {', '.join(MODEL_ROLES)}")
    if set(models) != set(MODEL_ROLES[kind]):
        raise JobSpecError("models", f"a {kind} job takes the models "
                           f"{', '.join(MODEL_ROLES[kind])}")
    role = MODEL_ROLES[kind][0]
    name, config = models[role]
    task = architecture(name).task
    required, allowed = required_inputs(kind, task)
    if not required <= set(input_names) <= allowed:
        raise JobSpecError("inputs", f"a {kind} job on a {task} takes "
                           f"{', '.join(sorted(allowed))} (required: "
                           f"{', '.join(sorted(required)) or 'none'})")
    if kind == "inference":
        return check_inference_params(task, params)
    return check_distill_params(name, config, params, has_dataset=DATASET in input_names)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerLimits:
    """What the worker applies to itself before importing torch (see worker.py)."""

    cpu_seconds: int
    memory_bytes: int
    threads: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """The contents of ``job.json``."""

    kind: str
    seed: int
    device: str
    limits: WorkerLimits
    inputs: tuple[str, ...]
    params: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "kind": self.kind, "seed": self.seed,
                "device": self.device, "inputs": list(self.inputs), "params": self.params,
                "limits": {"cpu_seconds": self.limits.cpu_seconds,
                           "memory_bytes": self.limits.memory_bytes,
                           "threads": self.limits.threads}}


def spec_from_json(raw: Any) -> JobSpec:
    """Parse ``job.json`` (the worker's side; params are checked once models are read)."""
    _known_keys(raw, {"version", "kind", "seed", "device", "inputs", "params", "limits"}, "spec")
    if raw.get("version") != SPEC_VERSION:
        raise JobSpecError("spec.version", f"must be {SPEC_VERSION}")
    if raw.get("kind") not in MODEL_ROLES or raw.get("device") not in DEVICES:
        raise JobSpecError("spec", "unknown kind or device")
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or not {INPUT_TENSORS, PROMPTS, DATASET} >= set(inputs):
        raise JobSpecError("spec.inputs", "unknown input file")
    limits = raw.get("limits")
    _known_keys(limits, {"cpu_seconds", "memory_bytes", "threads"}, "spec.limits")
    return JobSpec(
        kind=raw["kind"], seed=_integer(raw, "seed", REQUIRED, 0, SEED_MAX, prefix="spec"),
        device=raw["device"], inputs=tuple(inputs), params=raw.get("params", {}),
        limits=WorkerLimits(
            cpu_seconds=_integer(limits, "cpu_seconds", REQUIRED, 1, 1 << 31,
                                 prefix="spec.limits"),
            memory_bytes=_integer(limits, "memory_bytes", REQUIRED, 1 << 20, 1 << 50,
                                  prefix="spec.limits"),
            threads=_integer(limits, "threads", REQUIRED, 1, 256, prefix="spec.limits")))
