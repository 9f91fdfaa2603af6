"""The torch modules of the built-in architectures (imports torch: worker side only).

Rules:
1. ``build_model`` takes a config already checked by ``architectures.validate_config``;
   parameter names, dtypes and shapes are exactly ``architectures.expected_tensors``.
2. No dropout, no randomness in ``forward``: a model's output depends only on its weights
   and its input (plus torch's thread count and kernels: see ``configure_torch``).
3. The language model takes an optional attention mask for left-padded batches: a padded
   position attends only to itself (so no row is all masked, which would give NaN), and
   positions count from each row's first real token, so a prompt gives the same logits
   alone or in a padded batch up to floating-point summation order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from prsm_node.jobs.architectures import VOCAB_SIZE, validate_config

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MlpClassifier(nn.Module):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        sizes = [config["in_features"], *config["hidden"], config["num_classes"]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.activation = _ACTIVATIONS[config["activation"]]()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for layer in self.layers[:-1]:
            hidden = self.activation(layer(hidden))
        return self.layers[-1](hidden)


class ConvClassifier(nn.Module):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        kernel = config["kernel_size"]
        sizes = [config["in_channels"], *config["channels"]]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, padding=kernel // 2)
                                   for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], config["num_classes"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = images
        for conv in self.convs:
            hidden = functional.max_pool2d(functional.relu(conv(hidden)), 2)
        return self.head(hidden.mean(dim=(2, 3)))


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        query, key, value = self.qkv(hidden).split(width, dim=2)
        shape = (batch, length, self.heads, width // self.heads)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))
        scores = (query @ key.transpose(-2, -1)) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        mixed = torch.softmax(scores, dim=-1) @ value
        return self.proj(mixed.transpose(1, 2).reshape(batch, length, width))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("proj", nn.Linear(4 * width, width))

    def forward(self, hidden: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attn(self.ln1(hidden), allowed)
        return hidden + self.mlp(self.ln2(hidden))


class GptLanguageModel(nn.Module):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        width = config["n_embd"]
        self.block_size = config["block_size"]
        self.tok_emb = nn.Embedding(VOCAB_SIZE, width)
        self.pos_emb = nn.Embedding(self.block_size, width)
        self.blocks = nn.ModuleList(_Block(width, config["n_head"])
                                    for _ in range(config["n_layer"]))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB_SIZE, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position of ``tokens`` [batch, length]; ``mask`` (bool, same
        shape) is False on left padding (rule 3)."""
        _batch, length = tokens.shape
        assert length <= self.block_size, (length, self.block_size)
        if mask is None:
            mask = torch.ones_like(tokens, dtype=torch.bool)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        allowed = causal[None] & mask[:, None, :]
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=tokens.device)[None]
        hidden = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            hidden = block(hidden, allowed)
        return self.head(self.ln_f(hidden))


_MODULES = {"mlp": MlpClassifier, "cnn": ConvClassifier, "gpt": GptLanguageModel}


def build_model(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """A fresh module (random init from torch's current seed) in eval mode."""
    module = _MODULES[architecture](validate_config(architecture, config))
    return module.eval()


def configure_torch(*, threads: int, seed: int, cuda: bool = False) -> None:
    """Make this process's torch reproducible: a fixed thread count (reduction order), no
    TF32, and a seeded global generator (initialisation). On CUDA also deterministic
    kernels: ``use_deterministic_algorithms`` guards CUDA's atomics-based kernels, and our
    CPU ops never consult it, while turning it on imports torch._inductor (~1 s of the
    worker's start-up, measured with ``python -X importtime``)."""
    torch.set_num_threads(threads)
    if cuda:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(seed)
