"""Comparing two job outputs for a dispute, in pure Python, within the model's tolerance."""

from __future__ import annotations

import pytest
import torch

from prsm_node.jobs.errors import TensorFileError
from prsm_node.jobs.manifests import Tolerance
from prsm_node.jobs.outputs import compare_outputs, generated_bytes
from prsm_node.jobs.tensors import to_safetensors

TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)


def _output(logits: torch.Tensor, tokens: torch.Tensor | None = None) -> bytes:
    tensors = {"logits": logits}
    if tokens is not None:
        tensors["tokens"] = tokens
    return to_safetensors(tensors)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16,
                                   torch.bfloat16])
def test_outputs_within_the_tolerance_agree_and_beyond_it_do_not(dtype) -> None:
    base = torch.linspace(-3, 3, 40, dtype=torch.float64).reshape(4, 10)
    nudged = base.clone()
    nudged[2, 3] += 0.001 * abs(float(base[2, 3])) * 0.5  # within rtol
    far = base.clone()
    far[1, 7] += 0.5
    same = compare_outputs(_output(base.to(dtype)), _output(nudged.to(dtype)), TOLERANCE)
    assert same.equal and same.reason == ""
    other = compare_outputs(_output(base.to(dtype)), _output(far.to(dtype)), TOLERANCE)
    assert not other.equal and other.tensor == "logits"
    assert other.max_abs_difference == pytest.approx(0.5, rel=0.02)


def test_values_are_decoded_not_compared_as_bytes() -> None:
    """A zero tolerance still accepts -0.0 against 0.0 (equal numbers, different bytes)."""
    exact = Tolerance(atol=0.0, rtol=0.0)
    assert compare_outputs(_output(torch.tensor([0.0, 1.5])),
                           _output(torch.tensor([-0.0, 1.5])), exact).equal
    assert not compare_outputs(_output(torch.tensor([1.0, 1.5])),
                               _output(torch.tensor([1.0, 1.5000001])), exact).equal


def test_nan_agrees_only_with_nan_and_infinity_only_with_itself() -> None:
    nan, inf = float("nan"), float("inf")
    assert compare_outputs(_output(torch.tensor([nan, inf])), _output(torch.tensor([nan, inf])),
                           TOLERANCE).equal
    assert not compare_outputs(_output(torch.tensor([nan])), _output(torch.tensor([0.0])),
                               TOLERANCE).equal
    assert not compare_outputs(_output(torch.tensor([inf])), _output(torch.tensor([-inf])),
                               TOLERANCE).equal


def test_tokens_must_match_exactly_and_structure_must_match() -> None:
    logits = torch.zeros(2, 3)
    one = _output(logits, torch.tensor([[65, 66]]))
    assert not compare_outputs(one, _output(logits, torch.tensor([[65, 67]])),
                               TOLERANCE).equal
    assert compare_outputs(one, _output(logits), TOLERANCE).reason == "different tensor names"
    assert compare_outputs(one, _output(torch.zeros(3, 2), torch.tensor([[65, 66]])),
                           TOLERANCE).reason == "different dtype or shape"
    with pytest.raises(TensorFileError, match="output b"):
        compare_outputs(one, b"garbage", TOLERANCE)


def test_generated_bytes_reads_the_tokens_back() -> None:
    tokens = torch.tensor([list(b"hello"), list(b"world")])
    output = to_safetensors({"tokens": tokens, "logprobs": torch.zeros(2, 5)})
    assert generated_bytes(output) == [b"hello", b"world"]
    with pytest.raises(TensorFileError, match="tokens"):
        generated_bytes(_output(torch.zeros(1)))
