"""The built-in architectures: config schemas and expected tensors, without torch.

Rules:
1. An architecture is defined in code (``models.py`` builds the torch module); weights from
   the network only fill it. A config is a small JSON object; ``validate_config`` fills the
   defaults, refuses unknown keys, wrong types and out-of-range values, checks relations
   between keys, and returns the complete config, which is what a manifest stores (so a
   manifest never depends on our defaults).
2. ``expected_tensors`` gives every parameter's name, dtype and shape from the config alone,
   so the node checks a manifest and its weight files against the architecture without
   torch. A test checks it against the torch modules' ``state_dict`` for several configs.
3. Sizes are bounded (TigerStyle): each key has a range and the whole model is capped at
   ``PARAMETERS_MAX`` parameters, checked before anything is allocated.

The three architectures are small on purpose (a CPU runs them in seconds): an MLP
classifier, a convolutional classifier (conv, ReLU, 2x2 max-pool per layer, then a global
average pool and a linear head), and a GPT-style decoder-only language model over bytes
(vocabulary of 256: no tokenizer to download), pre-norm blocks, learned positions, no
weight tying (safetensors refuses shared tensors).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prsm_node.jobs.errors import ModelConfigError

PARAMETERS_MAX = 1 << 30
"""4 GiB of float32: far above what a CPU job runs, low enough to refuse a hostile config
before the worker allocates it."""
VOCAB_SIZE = 256
"""Byte-level tokens: a prompt is its UTF-8 bytes."""
DTYPE = "F32"
"""Weights are float32: every CPU runs it, and the tolerance in the manifest assumes it."""

TensorShapes = dict[str, tuple[str, tuple[int, ...]]]
CLASSIFIER = "classifier"
LANGUAGE_MODEL = "language_model"


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # "int", "int_list" or "choice"
    default: Any
    low: int = 0
    high: int = 0
    choices: tuple[Any, ...] = ()
    length_max: int = 0


def _check_value(architecture: str, key: str, spec: _Key, value: Any) -> Any:
    def fail(reason: str) -> ModelConfigError:
        return ModelConfigError(architecture, key, reason)

    if spec.kind == "choice":
        if value not in spec.choices or type(value) is not type(spec.choices[0]):
            raise fail(f"must be one of {', '.join(map(str, spec.choices))}")
        return value
    values = value if spec.kind == "int_list" else [value]
    if spec.kind == "int_list" and (not isinstance(value, list | tuple)
                                    or not 1 <= len(value) <= spec.length_max):
        raise fail(f"must be a list of 1 to {spec.length_max} integers")
    for item in values:
        if type(item) is not int or not spec.low <= item <= spec.high:
            raise fail(f"must be {'integers' if spec.kind == 'int_list' else 'an integer'} "
                       f"between {spec.low} and {spec.high}")
    return list(value) if spec.kind == "int_list" else value


def _linear(prefix: str, in_features: int, out_features: int, *, bias: bool = True
            ) -> TensorShapes:
    shapes = {f"{prefix}.weight": (DTYPE, (out_features, in_features))}
    if bias:
        shapes[f"{prefix}.bias"] = (DTYPE, (out_features,))
    return shapes


def _norm(prefix: str, size: int) -> TensorShapes:
    return {f"{prefix}.weight": (DTYPE, (size,)), f"{prefix}.bias": (DTYPE, (size,))}


# -- the architectures --------------------------------------------------------------------

_MLP_KEYS = {
    "in_features": _Key("int", 16, 1, 65_536),
    "hidden": _Key("int_list", [64], 1, 65_536, length_max=8),
    "num_classes": _Key("int", 4, 2, 65_536),
    "activation": _Key("choice", "relu", choices=("relu", "gelu", "tanh")),
}


def _mlp_tensors(config: Mapping[str, Any]) -> TensorShapes:
    sizes = [config["in_features"], *config["hidden"], config["num_classes"]]
    shapes: TensorShapes = {}
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        shapes |= _linear(f"layers.{index}", size_in, size_out)
    return shapes


_CNN_KEYS = {
    "in_channels": _Key("int", 1, 1, 64),
    "image_size": _Key("int", 8, 4, 512),
    "channels": _Key("int_list", [8, 16], 1, 1024, length_max=6),
    "kernel_size": _Key("choice", 3, choices=(1, 3, 5, 7)),
    "num_classes": _Key("int", 4, 2, 65_536),
}


def _cnn_relations(config: Mapping[str, Any]) -> tuple[str, str] | None:
    if config["image_size"] < 2 ** len(config["channels"]):
        return "image_size", "must be at least 2 ** len(channels): each layer halves it"
    return None


def _cnn_tensors(config: Mapping[str, Any]) -> TensorShapes:
    shapes: TensorShapes = {}
    size_in, kernel = config["in_channels"], config["kernel_size"]
    for index, size_out in enumerate(config["channels"]):
        shapes[f"convs.{index}.weight"] = (DTYPE, (size_out, size_in, kernel, kernel))
        shapes[f"convs.{index}.bias"] = (DTYPE, (size_out,))
        size_in = size_out
    return shapes | _linear("head", size_in, config["num_classes"])


_GPT_KEYS = {
    "block_size": _Key("int", 64, 4, 4096),
    "n_layer": _Key("int", 2, 1, 48),
    "n_head": _Key("int", 2, 1, 64),
    "n_embd": _Key("int", 32, 4, 8192),
}


def _gpt_relations(config: Mapping[str, Any]) -> tuple[str, str] | None:
    if config["n_embd"] % config["n_head"]:
        return "n_embd", "must be a multiple of n_head"
    return None


def _gpt_tensors(config: Mapping[str, Any]) -> TensorShapes:
    width = config["n_embd"]
    shapes: TensorShapes = {
        "tok_emb.weight": (DTYPE, (VOCAB_SIZE, width)),
        "pos_emb.weight": (DTYPE, (config["block_size"], width)),
    }
    for index in range(config["n_layer"]):
        block = f"blocks.{index}"
        shapes |= _norm(f"{block}.ln1", width)
        shapes |= _linear(f"{block}.attn.qkv", width, 3 * width)
        shapes |= _linear(f"{block}.attn.proj", width, width)
        shapes |= _norm(f"{block}.ln2", width)
        shapes |= _linear(f"{block}.mlp.fc", width, 4 * width)
        shapes |= _linear(f"{block}.mlp.proj", 4 * width, width)
    return shapes | _norm("ln_f", width) | _linear("head", width, VOCAB_SIZE, bias=False)


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str
    task: str  # CLASSIFIER or LANGUAGE_MODEL
    keys: Mapping[str, _Key]
    tensors: Callable[[Mapping[str, Any]], TensorShapes]
    relations: Callable[[Mapping[str, Any]], tuple[str, str] | None] = lambda config: None


ARCHITECTURES: Mapping[str, Architecture] = {
    "mlp": Architecture("mlp", CLASSIFIER, _MLP_KEYS, _mlp_tensors),
    "cnn": Architecture("cnn", CLASSIFIER, _CNN_KEYS, _cnn_tensors, _cnn_relations),
    "gpt": Architecture("gpt", LANGUAGE_MODEL, _GPT_KEYS, _gpt_tensors, _gpt_relations),
}


def architecture(name: str) -> Architecture:
    """The architecture called ``name``, or ModelConfigError naming the known ones."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ModelConfigError(str(name), None, "unknown architecture (known: "
                               f"{', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[name]


def validate_config(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The complete, checked config: defaults filled, every key checked (rule 1)."""
    spec = architecture(name)
    if not isinstance(config, Mapping):
        raise ModelConfigError(name, None, "config must be a JSON object")
    unknown = sorted(set(config) - set(spec.keys))
    if unknown:
        raise ModelConfigError(name, str(unknown[0]),
                               f"unknown key (known: {', '.join(spec.keys)})")
    full = {key: _check_value(name, key, key_spec, config.get(key, key_spec.default))
            for key, key_spec in spec.keys.items()}
    problem = spec.relations(full)
    if problem:
        raise ModelConfigError(name, *problem)
    count = sum(math.prod(shape) for _, shape in spec.tensors(full).values())
    if count > PARAMETERS_MAX:
        raise ModelConfigError(name, None, f"{count} parameters exceed {PARAMETERS_MAX}")
    return full


def expected_tensors(name: str, config: Mapping[str, Any]) -> TensorShapes:
    """Every parameter's dtype and shape, by name, for a checked config (rule 2)."""
    return architecture(name).tensors(validate_config(name, config))


def input_shape(name: str, config: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape of one classifier input (no batch dimension)."""
    if name == "mlp":
        return (config["in_features"],)
    if name == "cnn":
        return (config["in_channels"], config["image_size"], config["image_size"])
    raise ModelConfigError(name, None, "a language model takes token sequences")


def output_size(name: str, config: Mapping[str, Any]) -> int:
    """Classes of a classifier, or the vocabulary of a language model: what distillation
    needs to match between teacher and student."""
    return VOCAB_SIZE if architecture(name).task == LANGUAGE_MODEL else config["num_classes"]
