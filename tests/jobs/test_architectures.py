"""Architecture configs are checked with clear errors; expected tensors match torch."""

from __future__ import annotations

import pytest
import torch

from prsm_node.jobs.architectures import expected_tensors, validate_config
from prsm_node.jobs.errors import ModelConfigError
from prsm_node.jobs.models import build_model
from prsm_node.jobs.tensors import dtype_name


@pytest.mark.parametrize(("architecture", "config"), [
    ("mlp", {}),
    ("mlp", {"in_features": 3, "hidden": [5, 7, 2], "num_classes": 9, "activation": "tanh"}),
    ("cnn", {}),
    ("cnn", {"in_channels": 3, "image_size": 16, "channels": [4, 4, 6], "kernel_size": 5}),
    ("gpt", {}),
    ("gpt", {"block_size": 16, "n_layer": 3, "n_head": 4, "n_embd": 24}),
])
def test_expected_tensors_are_the_modules_state_dict(architecture: str, config: dict) -> None:
    with torch.device("meta"):
        module = build_model(architecture, config)
    actual = {name: (dtype_name(t.dtype), tuple(t.shape))
              for name, t in module.state_dict().items()}
    assert actual == expected_tensors(architecture, config)


def test_validate_fills_defaults_and_is_idempotent() -> None:
    full = validate_config("mlp", {"hidden": [8]})
    assert full == {"in_features": 16, "hidden": [8], "num_classes": 4, "activation": "relu"}
    assert validate_config("mlp", full) == full


@pytest.mark.parametrize(("architecture", "config", "key", "reason"), [
    ("mlp", {"hiden": [8]}, "hiden", "unknown key"),
    ("mlp", {"in_features": 0}, "in_features", "between 1 and"),
    ("mlp", {"in_features": True}, "in_features", "an integer"),
    ("mlp", {"hidden": []}, "hidden", "list of 1 to 8"),
    ("mlp", {"hidden": [8, "8"]}, "hidden", "integers between"),
    ("mlp", {"activation": "swish"}, "activation", "one of relu"),
    ("cnn", {"kernel_size": 4}, "kernel_size", "one of 1, 3, 5, 7"),
    ("cnn", {"image_size": 4, "channels": [2, 2, 2]}, "image_size", "each layer halves it"),
    ("gpt", {"n_embd": 30, "n_head": 4}, "n_embd", "multiple of n_head"),
    ("gpt", {"n_embd": 8192, "n_layer": 48, "n_head": 64}, None, "parameters exceed"),
    ("resnet", {}, None, "unknown architecture"),
])
def test_bad_configs_name_the_key_and_the_reason(architecture: str, config: dict,
                                                 key: str | None, reason: str) -> None:
    with pytest.raises(ModelConfigError, match=reason) as caught:
        validate_config(architecture, config)
    assert caught.value.key == key


def test_the_language_model_gives_the_same_logits_alone_and_left_padded() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", {"block_size": 16})
    prompt = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    mask = torch.tensor([[False, False, True, True, True, True]])
    with torch.no_grad():
        alone = model(prompt)[0]
        batched = model(padded, mask)[0, 2:]
    assert torch.allclose(alone, batched, atol=1e-5)
