"""Distillation: train a student on a teacher's soft targets (imports torch).

The loss is ``(1 - a) * T^2 * KL(teacher_T || student_T) + a * CE(student, labels)`` with
``a = hard_label_weight`` when the dataset has labels, else 0 (Hinton et al. 2015). The
student starts from the job's seed, batches are drawn with the job's seed, and the teacher
runs in eval mode without gradients. Inputs come from a dataset file (``input`` and, for a
classifier, optional ``labels``) or from a recipe (``data.recipe_inputs``), checked here
against both models before the first step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prsm_node.jobs.architectures import CLASSIFIER, architecture, input_shape, output_size
from prsm_node.jobs.data import recipe_inputs
from prsm_node.jobs.errors import JobSpecError
from prsm_node.jobs.models import build_model
from prsm_node.jobs.training import Progress, hard_label_loss, soft_target_loss, train


@dataclass(frozen=True, slots=True, kw_only=True)
class DistillResult:
    student: nn.Module
    final_loss: float
    samples: int


def _classifier_dataset(tensors: Mapping[str, torch.Tensor], teacher: str,
                        teacher_config: Mapping[str, Any], student: str,
                        student_config: Mapping[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    shape = input_shape(teacher, teacher_config)
    if input_shape(student, student_config) != shape:
        raise JobSpecError("params.student.config", f"student input shape must be {shape}")
    inputs, labels = tensors.get("input"), tensors.get("labels")
    if inputs is None or not set(tensors) <= {"input", "labels"} or inputs.dtype != \
            torch.float32 or tuple(inputs.shape[1:]) != shape or len(inputs) < 1:
        raise JobSpecError("inputs.dataset", f"needs 'input' F32 [N >= 1, {list(shape)}] "
                           "and optional 'labels'")
    classes = output_size(teacher, teacher_config)
    if labels is not None and (labels.dtype != torch.int64 or labels.shape != (len(inputs),)
                               or labels.min() < 0 or labels.max() >= classes):
        raise JobSpecError("inputs.dataset", f"'labels' must be I64 [N] in [0, {classes})")
    return inputs, labels


def _token_dataset(tensors: Mapping[str, torch.Tensor], length_max: int) -> torch.Tensor:
    tokens = tensors.get("input")
    if set(tensors) != {"input"} or tokens is None or tokens.dtype != torch.int64 or \
            tokens.dim() != 2 or not 1 <= tokens.shape[1] <= length_max or len(tokens) < 1 \
            or tokens.min() < 0 or tokens.max() > 255:
        raise JobSpecError("inputs.dataset", f"needs 'input' I64 [N >= 1, 1..{length_max}] "
                           "of byte tokens")
    return tokens


def distill_inputs(teacher: str, teacher_config: Mapping[str, Any],
                   params: Mapping[str, Any], dataset: Mapping[str, torch.Tensor] | None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (inputs, labels or None) the student trains on: the dataset or the recipe."""
    student = params["student"]
    if architecture(teacher).task == CLASSIFIER:
        if dataset is None:
            dataset = {"input": recipe_inputs(params["recipe"], teacher, teacher_config)}
        return _classifier_dataset(dataset, teacher, teacher_config, student["architecture"],
                                   student["config"])
    length_max = min(teacher_config["block_size"], student["config"]["block_size"])
    if dataset is None:
        dataset = {"input": recipe_inputs(params["recipe"], teacher, teacher_config,
                                          length_max)}
    return _token_dataset(dataset, length_max), None


def distill(teacher_model: nn.Module, teacher: str, teacher_config: Mapping[str, Any],
            params: Mapping[str, Any], *, dataset: Mapping[str, torch.Tensor] | None,
            seed: int, device: torch.device, progress: Progress | None = None
            ) -> DistillResult:
    """Train the student that ``params`` (checked by ``spec.check_distill_params``) names."""
    inputs, labels = distill_inputs(teacher, teacher_config, params, dataset)
    torch.manual_seed(seed)
    student = params["student"]
    student_model = build_model(student["architecture"], student["config"]).to(device)
    teacher_model.eval()
    label_weight = params["hard_label_weight"] if labels is not None else 0.0
    temperature = params["temperature"]

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        batch = inputs[rows].to(device)
        with torch.no_grad():
            target = teacher_model(batch)
        output = student_model(batch)
        loss = soft_target_loss(output, target, temperature)
        if label_weight:
            loss = (1 - label_weight) * loss + label_weight * hard_label_loss(
                output, labels[rows].to(device))
        return loss

    final_loss = train(student_model, loss_of=loss_of, count=len(inputs),
                       steps=params["steps"], batch_size=params["batch_size"],
                       learning_rate=params["learning_rate"], seed=seed, progress=progress,
                       progress_every=params["progress_every"])
    return DistillResult(student=student_model, final_loss=final_loss, samples=len(inputs))
