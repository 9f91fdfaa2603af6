"""Tiny demo models, trained in seconds on a CPU (``model publish --demo``; tests).

Each architecture has a demo config and a seeded synthetic task (``data.py``): the MLP
learns Gaussian clusters, the CNN bar orientations in 8x8 images, the GPT the built-in
text. ``train_demo`` returns the trained weights and the accuracy on held-out samples (the
next-byte accuracy for the GPT), so a caller can see that the model learned something.
Imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prsm_node.jobs.architectures import validate_config
from prsm_node.jobs.data import classification_task, image_task, text_windows
from prsm_node.jobs.manifests import PublishedModel, Put, publish_model
from prsm_node.jobs.models import build_model
from prsm_node.jobs.tensors import to_safetensors
from prsm_node.jobs.training import hard_label_loss, train

DEMO_CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "mlp": {"in_features": 16, "hidden": [64], "num_classes": 4, "activation": "relu"},
    "cnn": {"in_channels": 1, "image_size": 8, "channels": [8, 16], "kernel_size": 3,
            "num_classes": 4},
    "gpt": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
}
DEMO_STEPS = {"mlp": 300, "cnn": 300, "gpt": 300}
TRAIN_SAMPLES = 4096
HELD_OUT_SAMPLES = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoModel:
    architecture: str
    config: Mapping[str, Any]  # complete (validated)
    model: nn.Module  # trained, eval mode
    held_out_accuracy: float


def demo_task(architecture: str, *, seed: int, samples: int,
              config: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the demo task: class labels, or next bytes for the GPT."""
    config = validate_config(architecture, config or DEMO_CONFIGS[architecture])
    if architecture == "mlp":
        return classification_task(seed=seed, samples=samples,
                                   in_features=config["in_features"],
                                   num_classes=config["num_classes"])
    if architecture == "cnn":
        return image_task(seed=seed, samples=samples, image_size=config["image_size"],
                          num_classes=config["num_classes"])
    windows = text_windows(seed=seed, samples=samples, length=config["block_size"] + 1)
    return windows[:, :-1], windows[:, 1:]


def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of argmax predictions equal to the targets (every position for a GPT)."""
    with torch.no_grad():
        predicted = model(inputs).argmax(dim=-1)
    return (predicted == targets).float().mean().item()


def train_demo(architecture: str, *, seed: int = 0, steps: int | None = None,
               config: Mapping[str, Any] | None = None) -> DemoModel:
    """Train the demo model of ``architecture`` (``config`` overrides the demo config) on
    its task, from ``seed``; held-out samples use ``seed + 1``."""
    config = validate_config(architecture, config or DEMO_CONFIGS[architecture])
    # The task's structure (cluster centres) comes from the seed: train and held-out data
    # are one draw, split, so both come from the same distribution.
    inputs, targets = demo_task(architecture, seed=seed, config=config,
                                samples=TRAIN_SAMPLES + HELD_OUT_SAMPLES)
    train_inputs, train_targets = inputs[:TRAIN_SAMPLES], targets[:TRAIN_SAMPLES]
    torch.manual_seed(seed)
    model = build_model(architecture, config)
    train(model, loss_of=lambda rows: hard_label_loss(model(train_inputs[rows]),
                                                      train_targets[rows]),
          count=TRAIN_SAMPLES, steps=steps or DEMO_STEPS[architecture], batch_size=64,
          learning_rate=1e-2, seed=seed)
    held_out = accuracy(model, inputs[TRAIN_SAMPLES:], targets[TRAIN_SAMPLES:])
    return DemoModel(architecture=architecture, config=config, model=model,
                     held_out_accuracy=held_out)


def publish_demo(put: Put, *, architecture: str, owner: bytes, name: str | None = None,
                 seed: int = 0, steps: int | None = None) -> PublishedModel:
    """Train the demo model of ``architecture`` and publish it through ``put``
    (``model publish --demo``)."""
    demo = train_demo(architecture, seed=seed, steps=steps)
    return publish_model(put, name=name or f"demo-{architecture}", architecture=architecture,
                         config=demo.config, weights=to_safetensors(demo.model.state_dict()),
                         owner=owner)
