"""Distillation through the worker: a smaller student learns the teacher's task."""

from __future__ import annotations

import math

import pytest
import torch

from prsm_node.jobs.demo import HELD_OUT_SAMPLES, TRAIN_SAMPLES, accuracy, demo_task
from prsm_node.jobs.distill import distill
from prsm_node.jobs.manifests import describe_model, fetch_model, publish_student
from prsm_node.jobs.process import JobRequest
from prsm_node.jobs.tensors import load_model, to_safetensors
from storage.cid import Cid
from storage.unixfs import Block
from tests.jobs.helpers import OWNER, published, reproducible_torch

STUDENT = {"architecture": "mlp", "config": {"hidden": [8]}}


@pytest.mark.multiprocess
async def test_distilled_student_reaches_90_percent_of_the_teacher_accuracy(
        start_runner) -> None:
    teacher = published("mlp")  # hidden [64], trained on the first TRAIN_SAMPLES (seed 0)
    inputs, labels = demo_task("mlp", seed=0, samples=TRAIN_SAMPLES + HELD_OUT_SAMPLES)
    dataset = to_safetensors({"input": inputs[:TRAIN_SAMPLES],
                              "labels": labels[:TRAIN_SAMPLES]})
    runner = await start_runner()
    events: list[dict] = []
    job_id = runner.submit(JobRequest(
        kind="distill", models={"teacher": teacher.files()},
        inputs={"dataset.safetensors": dataset}, seed=1,
        params={"student": STUDENT, "steps": 300, "temperature": 2.0,
                "learning_rate": 0.01, "progress_every": 50}), on_event=events.append)
    result = await runner.wait(job_id)
    steps = [event["step"] for event in events if event["event"] == "progress"]
    assert steps == [50, 100, 150, 200, 250, 300]
    assert [event["event"] for event in events][-1] == "done"
    progress = runner.status(job_id).progress
    assert progress["step"] == progress["steps"] == 300 and math.isfinite(progress["loss"])

    blocks: dict[Cid, bytes] = {}

    def put(block: Block) -> None:
        blocks[block.cid] = block.data

    student = publish_student(put, name="student", owner=OWNER,
                              teacher=teacher.published.cid,
                              weights=result.outputs["student.safetensors"], info=result.info)
    fetched = fetch_model(student.cid, blocks.__getitem__)
    lineage = describe_model(fetched.manifest).lineage
    assert lineage["teacher"] == str(teacher.published.cid) and lineage["steps"] == 300
    model, description = load_model(fetched.manifest, fetched.files)
    assert description.config["hidden"] == [8]
    held_out = accuracy(model, inputs[TRAIN_SAMPLES:], labels[TRAIN_SAMPLES:])
    assert held_out >= 0.9 * teacher.demo.held_out_accuracy, (held_out,
                                                              teacher.demo.held_out_accuracy)


@pytest.mark.parametrize(("architecture", "student", "recipe"), [
    ("cnn", {"channels": [4]}, {"kind": "gaussian", "samples": 256, "seed": 2}),
    ("gpt", {"n_layer": 1, "n_embd": 16, "block_size": 16}, {"kind": "text", "samples": 64,
                                                             "seed": 2}),
])
def test_students_of_every_task_train_from_a_recipe(architecture: str, student: dict,
                                                    recipe: dict) -> None:
    teacher = published(architecture)
    files = teacher.files()
    description = describe_model(files.manifest)
    params = {"student": {"architecture": architecture,
                          "config": teacher.demo.config | student},
              "steps": 20, "temperature": 2.0, "learning_rate": 0.01, "batch_size": 16,
              "hard_label_weight": 0.5, "recipe": recipe, "progress_every": 5}
    losses: list[tuple[int, float]] = []
    with reproducible_torch():
        model, _ = load_model(files.manifest, files.files)
        result = distill(model, architecture, description.config, params, dataset=None,
                         seed=0, device=torch.device("cpu"),
                         progress=lambda step, loss: losses.append((step, loss)))
    assert [step for step, _ in losses] == [5, 10, 15, 20]
    assert losses[-1][1] < losses[0][1]
    assert result.samples == recipe["samples"]
