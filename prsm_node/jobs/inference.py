"""Inference: classifier logits and language-model generation (imports torch).

Rules:
1. The output is a function of (weights, input, params, seed, thread count, hardware):
   no global generator is read, sampling draws from one ``torch.Generator`` seeded by the
   job, batches are cut in input order, and greedy decoding takes the first maximum.
2. The same function runs in the worker and in a test or benchmark process, so "the
   worker's result equals the model run directly" compares like with like.
3. A batch of prompts is left-padded to its longest prompt (``models.py`` masks the pads);
   each step feeds at most the model's ``block_size`` last tokens. No KV cache: the models
   are tiny and the recomputation keeps one code path for every step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prsm_node.jobs.architectures import CLASSIFIER, architecture, input_shape
from prsm_node.jobs.errors import JobSpecError

PROMPT_SIZE_MAX = 64 * 1024
"""Bytes per prompt: only the last ``block_size`` are used; the cap bounds the input."""


def classify(model: nn.Module, inputs: torch.Tensor, *, batch_size: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """``logits`` (F32 [N, classes]) for ``inputs`` [N, *input shape], in batches."""
    pieces = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size].to(device)
            pieces.append(model(batch).float().cpu())
    return {"logits": torch.cat(pieces)}


def _next_tokens(logits: torch.Tensor, *, temperature: float, top_k: int,
                 draw: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    scaled = logits / temperature
    if top_k:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=draw)


def _generate_batch(model: nn.Module, prompts: Sequence[bytes], params: Mapping[str, Any],
                    draw: torch.Generator, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(prompt) for prompt in prompts)
    tokens = torch.zeros(len(prompts), length, dtype=torch.int64)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        tokens[row, length - len(prompt):] = torch.tensor(list(prompt), dtype=torch.int64)
        mask[row, length - len(prompt):] = True
    tokens, mask = tokens.to(device), mask.to(device)
    chosen, logprobs = [], []
    block_size = model.block_size
    for _ in range(params["max_new_tokens"]):
        logits = model(tokens[:, -block_size:], mask[:, -block_size:])[:, -1, :].float()
        following = _next_tokens(logits, temperature=params["temperature"],
                                 top_k=params["top_k"], draw=draw)
        chosen.append(following)
        logprobs.append(torch.log_softmax(logits, dim=-1).gather(1, following))
        tokens = torch.cat([tokens, following], dim=1)
        mask = torch.cat([mask, torch.ones_like(following, dtype=torch.bool)], dim=1)
    return torch.cat(chosen, dim=1).cpu(), torch.cat(logprobs, dim=1).cpu()


def generate(model: nn.Module, prompts: Sequence[bytes], params: Mapping[str, Any], *,
             seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """``tokens`` (I64) and their ``logprobs`` (F32), [N, max_new_tokens], for byte
    prompts; greedy at temperature 0, else sampled (top-k) with the job's seed."""
    for index, prompt in enumerate(prompts):
        if not 1 <= len(prompt) <= PROMPT_SIZE_MAX:
            raise JobSpecError(f"prompts[{index}]", f"must have 1 to {PROMPT_SIZE_MAX} bytes")
    draw = torch.Generator(device=device).manual_seed(seed)
    tokens, logprobs = [], []
    with torch.no_grad():
        for start in range(0, len(prompts), params["batch_size"]):
            batch = prompts[start:start + params["batch_size"]]
            batch_tokens, batch_logprobs = _generate_batch(model, batch, params, draw, device)
            tokens.append(batch_tokens)
            logprobs.append(batch_logprobs)
    return {"tokens": torch.cat(tokens), "logprobs": torch.cat(logprobs)}


def check_classifier_input(name: str, config: Mapping[str, Any],
                           inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The ``input`` tensor of an inference input file, checked against the model."""
    tensor = inputs.get("input")
    if set(inputs) != {"input"} or tensor is None:
        raise JobSpecError("inputs.input", "the input file must hold one tensor, 'input'")
    expected = input_shape(name, config)
    if (tensor.dtype != torch.float32 or tuple(tensor.shape[1:]) != expected
            or tensor.shape[0] < 1):
        raise JobSpecError("inputs.input", f"must be F32 [N >= 1, "
                           f"{', '.join(map(str, expected))}], got {tensor.dtype} "
                           f"{list(tensor.shape)}")
    return tensor


def run_inference(model: nn.Module, name: str, config: Mapping[str, Any], *,
                  inputs: Mapping[str, torch.Tensor] | None, prompts: Sequence[str] | None,
                  params: Mapping[str, Any], seed: int,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """One inference job on a loaded model: classifier ``inputs`` or language-model
    ``prompts`` (params checked by ``spec.check_inference_params``)."""
    if architecture(name).task == CLASSIFIER:
        assert inputs is not None
        tensor = check_classifier_input(name, config, inputs)
        return classify(model, tensor, batch_size=params["batch_size"], device=device)
    assert prompts is not None
    return generate(model, [prompt.encode() for prompt in prompts], params, seed=seed,
                    device=device)
