"""Seeded data: synthetic tasks for the demo models and recipes for distillation inputs.

Every function takes an explicit seed and draws from its own ``torch.Generator``, so the
same arguments give the same tensors on any machine (torch's CPU generator is portable),
and nothing here touches torch's global generator. Imports torch: worker side only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from prsm_node.jobs.architectures import input_shape

BUILTIN_TEXT = (
    b"The network shares models and compute. Every node keeps a copy of the ledger, stores "
    b"the blocks it was asked to keep, and runs the jobs it was given. A model is a set of "
    b"tensors and a manifest that names them; a job is a model, an input and a price. The "
    b"worker runs the job in a process of its own, with limits on time and memory, and "
    b"posts the address of its output. Anyone may run the same job again and compare. A "
    b"student learns from a teacher by matching its soft answers at a high temperature, "
    b"and the student's manifest names the teacher it learned from. Small models run on "
    b"small machines; large models need many. The same input, the same model and the same "
    b"seed give the same answer on the same kind of hardware, and that is what makes a "
    b"result worth paying for. "
)
"""The demo language model's corpus: short, ASCII, written for this project."""


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def classification_task(*, seed: int, samples: int, in_features: int = 16,
                        num_classes: int = 4, noise: float = 1.6
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters: ``num_classes`` centres (fixed by ``seed``), samples around them
    with ``noise``, overlapping enough that a model earns its accuracy."""
    draw = generator(seed)
    centres = torch.randn(num_classes, in_features, generator=draw)
    labels = torch.randint(0, num_classes, (samples,), generator=draw)
    inputs = centres[labels] + noise * torch.randn(samples, in_features, generator=draw)
    return inputs, labels


def image_task(*, seed: int, samples: int, image_size: int = 8, num_classes: int = 4,
               noise: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """1-channel images of a bar at a random offset: horizontal, vertical, diagonal or
    anti-diagonal (the class, modulo 4), plus noise; shape [samples, 1, size, size]."""
    draw = generator(seed)
    labels = torch.randint(0, num_classes, (samples,), generator=draw)
    offsets = torch.randint(0, image_size, (samples,), generator=draw)
    images = noise * torch.randn(samples, 1, image_size, image_size, generator=draw)
    line = torch.arange(image_size)
    for index in range(samples):
        label, offset = int(labels[index]) % 4, int(offsets[index])
        rows, columns = {0: (torch.full_like(line, offset), line),
                         1: (line, torch.full_like(line, offset)),
                         2: (line, (line + offset) % image_size),
                         3: (line, (offset - line) % image_size)}[label]
        images[index, 0, rows, columns] += 1.0
    return images, labels


def text_windows(*, seed: int, samples: int, length: int, text: bytes = BUILTIN_TEXT
                 ) -> torch.Tensor:
    """``samples`` windows of ``length`` byte tokens at random offsets of ``text``."""
    corpus = torch.tensor(list(text), dtype=torch.int64)
    assert len(corpus) > length, "the corpus must be longer than a window"
    starts = torch.randint(0, len(corpus) - length, (samples,), generator=generator(seed))
    return torch.stack([corpus[start:start + length] for start in starts.tolist()])


def recipe_inputs(recipe: Mapping[str, Any], architecture: str,
                  config: Mapping[str, Any], length: int = 0) -> torch.Tensor:
    """Synthetic distillation inputs from a checked recipe (spec.py): gaussian or uniform
    inputs of the teacher's input shape, or token windows of ``length`` (language models)."""
    draw = generator(recipe["seed"])
    samples = recipe["samples"]
    if recipe["kind"] == "gaussian":
        return torch.randn(samples, *input_shape(architecture, config), generator=draw)
    if recipe["kind"] == "uniform":
        return torch.rand(samples, *input_shape(architecture, config), generator=draw) * 2 - 1
    if recipe["kind"] == "bytes":
        return torch.randint(0, 256, (samples, length), generator=draw)
    return text_windows(seed=recipe["seed"], samples=samples, length=length)


def batch_indices(count: int, batch_size: int, draw: torch.Generator) -> torch.Tensor:
    """A random batch of row indices (with replacement across batches)."""
    return torch.randint(0, count, (min(batch_size, count),), generator=draw)
