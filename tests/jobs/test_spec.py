"""Job params are checked before a job is queued, with the field named."""

from __future__ import annotations

import pytest

from prsm_node.jobs.architectures import validate_config
from prsm_node.jobs.errors import JobSpecError
from prsm_node.jobs.spec import JobSpec, WorkerLimits, check_params, spec_from_json

MLP = ("mlp", validate_config("mlp", {}))
GPT = ("gpt", validate_config("gpt", {}))
STUDENT = {"architecture": "mlp", "config": {"hidden": [8]}}


def test_defaults_are_filled_in() -> None:
    assert check_params("inference", {"model": GPT}, {"prompts.json"}, {}) == {
        "batch_size": 64, "max_new_tokens": 32, "temperature": 0.0, "top_k": 0}
    params = check_params("distill", {"teacher": MLP}, {"dataset.safetensors"},
                          {"student": STUDENT, "steps": 500})
    assert params["student"]["config"]["hidden"] == [8]
    assert params["progress_every"] == 5 and params["recipe"] is None
    # The worker checks the node's checked params again: they must pass unchanged.
    assert check_params("distill", {"teacher": MLP}, {"dataset.safetensors"}, params) == params


@pytest.mark.parametrize(("kind", "models", "inputs", "params", "field"), [
    ("train", {"model": MLP}, set(), {}, "kind"),
    ("inference", {"teacher": MLP}, {"input.safetensors"}, {}, "models"),
    ("inference", {"model": MLP}, {"prompts.json"}, {}, "inputs"),
    ("inference", {"model": MLP}, {"input.safetensors"}, {"max_new_tokens": 3},
     "params.max_new_tokens"),
    ("inference", {"model": GPT}, {"prompts.json"}, {"batch_size": 0}, "params.batch_size"),
    ("inference", {"model": GPT}, {"prompts.json"}, {"temperature": "hot"},
     "params.temperature"),
    ("inference", {"model": GPT}, {"prompts.json"}, {"top_k": 1.5}, "params.top_k"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"}, {"student": STUDENT},
     "params.steps"),
    ("distill", {"teacher": MLP}, set(), {"student": STUDENT, "steps": 5}, "params.recipe"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"},
     {"student": STUDENT, "steps": 5, "recipe": {"kind": "gaussian", "samples": 9}},
     "params.recipe"),
    ("distill", {"teacher": MLP}, set(),
     {"student": STUDENT, "steps": 5, "recipe": {"kind": "text", "samples": 9}},
     "params.recipe.kind"),
    ("distill", {"teacher": MLP}, set(),
     {"student": STUDENT, "steps": 5, "recipe": {"kind": "gaussian"}},
     "params.recipe.samples"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"},
     {"student": {"architecture": "mlp", "config": {"num_classes": 5}}, "steps": 5},
     "params.student.config"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"},
     {"student": {"architecture": "gpt", "config": {}}, "steps": 5},
     "params.student.architecture"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"},
     {"student": {"architecture": "mlp", "config": {"width": 3}}, "steps": 5},
     "params.student"),
    ("distill", {"teacher": MLP}, {"dataset.safetensors"},
     {"student": STUDENT, "steps": 5, "temperature": 0}, "params.temperature"),
])
def test_bad_jobs_are_refused_naming_the_field(kind: str, models: dict, inputs: set,
                                               params: dict, field: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        check_params(kind, models, inputs, params)
    assert caught.value.field == field


def test_the_spec_file_round_trips_and_is_checked() -> None:
    spec = JobSpec(kind="inference", seed=3, device="cpu", inputs=("prompts.json",),
                   params={"max_new_tokens": 2},
                   limits=WorkerLimits(cpu_seconds=5, memory_bytes=1 << 30, threads=2))
    assert spec_from_json(spec.to_json()) == spec
    with pytest.raises(JobSpecError, match=r"spec\.limits\.threads"):
        spec_from_json(spec.to_json() | {"limits": {"cpu_seconds": 5,
                                                    "memory_bytes": 1 << 30, "threads": 0}})
    with pytest.raises(JobSpecError, match="unknown input file"):
        spec_from_json(spec.to_json() | {"inputs": ["../node.key"]})
