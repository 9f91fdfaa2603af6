"""The one training loop (demo models and distilled students), and the loss functions.

Seeded: the batches come from a generator seeded by the caller and the optimiser is Adam
(no randomness of its own), so a run is reproducible on the same hardware and thread
count. Imports torch: worker side only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional

from prsm_node.jobs.data import batch_indices, generator

Progress = Callable[[int, float], None]
"""Called with (step, loss) every ``progress_every`` steps and after the last one."""


def train(model: nn.Module, *, loss_of: Callable[[torch.Tensor], torch.Tensor], count: int,
          steps: int, batch_size: int, learning_rate: float, seed: int,
          progress: Progress | None = None, progress_every: int = 0) -> float:
    """Adam on ``loss_of(batch row indices)`` for ``steps`` steps; returns the last loss.
    Leaves ``model`` in eval mode."""
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    draw = generator(seed)
    every = max(1, progress_every)
    last_loss = float("nan")
    for step in range(1, steps + 1):
        loss = loss_of(batch_indices(count, batch_size, draw))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step == steps or (progress is not None and step % every == 0):
            last_loss = loss.item()
            if progress is not None:
                progress(step, last_loss)
    model.eval()
    return last_loss


def flat_logits(logits: torch.Tensor) -> torch.Tensor:
    """[batch, classes] or [batch, length, vocab] as rows of [*, classes]."""
    return logits.reshape(-1, logits.shape[-1])


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times T^2 so that its gradients keep
    their scale as T changes (Hinton, Vinyals & Dean 2015, section 2)."""
    return functional.kl_div(
        torch.log_softmax(flat_logits(student) / temperature, dim=-1),
        torch.log_softmax(flat_logits(teacher) / temperature, dim=-1),
        log_target=True, reduction="batchmean") * temperature * temperature


def hard_label_loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(flat_logits(student), labels.reshape(-1))
