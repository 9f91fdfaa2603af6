"""Models in the block store: weights to manifest plus files, and back, checked; no torch.

Rules:
1. A model manifest's ``config`` is ``{"model": <the architecture's complete config>,
   "tolerance": {"atol": float, "rtol": float}}`` plus, for a distilled student,
   ``"lineage": {"method": "distill", "teacher": "<teacher manifest CID>", ...}``. The
   tolerance is what disputes use to compare floating-point outputs (``compare.py``).
2. Publishing re-shards the weights into safetensors files of at most ``shard_size_max``
   bytes (whole tensors; a tensor larger than the limit gets a file of its own), stores
   each file as a UnixFS DAG, then the manifest block. What it built is checked with the
   same function that checks a fetched model (paired check, STYLE.md).
3. ``check_weights`` is the one gate for weights: the architecture's expected tensors, the
   manifest's tensors and each file's header (and size) must agree exactly, by name, dtype
   and shape; anything else is a ``WeightsMismatchError`` naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prsm_node.jobs.architectures import expected_tensors, validate_config
from prsm_node.jobs.errors import ModelError, TensorFileError, WeightsMismatchError
from prsm_node.jobs.tensorfile import RawTensor, parse_header, read_tensors, write_tensorfile
from storage.cid import Cid
from storage.errors import InvalidCidError
from storage.manifest import Manifest, TensorSpec, WeightFile, load_manifest, manifest_block
from storage.unixfs import Block, BlockGetter, add_chunks, read_file

SHARD_SIZE_MAX = 256 * 1024 * 1024
"""Bytes per weight file by default: a worker holds one file's bytes while it parses it;
Hugging Face shards at 5 GB, far more than a CPU job wants at once."""
DEFAULT_TOLERANCE = {"atol": 1e-4, "rtol": 1e-3}
"""float32 outputs of these small models differ by ~1e-6 across thread counts and by
~1e-5 across CPU kernels (measured on the demo models); 10x and more of slack."""
TOLERANCE_MAX = 1e3
WEIGHTS_METADATA = {"format": "pt"}
"""What ``safetensors.torch.save`` writes, so other tools read the shards as torch ones."""

Put = Callable[[Block], object]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    atol: float
    rtol: float

    def __post_init__(self) -> None:
        for value in (self.atol, self.rtol):
            if not isinstance(value, float | int) or not 0 <= value <= TOLERANCE_MAX \
                    or not math.isfinite(value):
                raise ModelError(f"tolerance values must be numbers in [0, {TOLERANCE_MAX}]")

    def as_config(self) -> dict[str, float]:
        return {"atol": float(self.atol), "rtol": float(self.rtol)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelDescription:
    """What a manifest's ``config`` says (rule 1), checked."""

    architecture: str
    config: Mapping[str, Any]  # the architecture's complete config
    tolerance: Tolerance
    lineage: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelFiles:
    """A model ready for a job: its manifest and the bytes of every weight file, checked."""

    manifest: Manifest
    files: Mapping[str, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedModel:
    cid: Cid  # the manifest block's CID: the model's address
    manifest: Manifest
    files: Mapping[str, bytes]


def _tolerance(raw: object) -> Tolerance:
    if not isinstance(raw, Mapping) or set(raw) != {"atol", "rtol"}:
        raise ModelError("config.tolerance must be {\"atol\": number, \"rtol\": number}")
    return Tolerance(atol=raw["atol"], rtol=raw["rtol"])


def _lineage(raw: object) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("teacher"), str):
        raise ModelError("config.lineage must be a map with the teacher's manifest CID")
    try:
        Cid.parse(raw["teacher"])
    except InvalidCidError as error:
        raise ModelError(f"config.lineage.teacher: {error}") from None
    return raw


def model_config(architecture: str, config: Mapping[str, Any], *,
                 tolerance: Tolerance | None = None,
                 lineage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest ``config`` for a model (rule 1), every part checked."""
    body: dict[str, Any] = {
        "model": validate_config(architecture, config),
        "tolerance": (tolerance or Tolerance(**DEFAULT_TOLERANCE)).as_config(),
    }
    if lineage is not None:
        body["lineage"] = dict(_lineage(lineage))
    return body


def describe_model(manifest: Manifest) -> ModelDescription:
    """Parse and check a manifest's config (rule 1)."""
    config = manifest.config
    if not set(config) <= {"model", "tolerance", "lineage"} or "model" not in config:
        raise ModelError("manifest config must hold model, tolerance and optional lineage")
    lineage = config.get("lineage")
    return ModelDescription(
        architecture=manifest.architecture,
        config=validate_config(manifest.architecture, config["model"]),
        tolerance=_tolerance(config.get("tolerance", DEFAULT_TOLERANCE)),
        lineage=None if lineage is None else _lineage(lineage),
    )


def shard_weights(weights: bytes, shard_size_max: int = SHARD_SIZE_MAX) -> dict[str, bytes]:
    """Re-shard one safetensors file into files of at most ``shard_size_max`` data bytes,
    tensors in name order (rule 2); names follow the Hugging Face convention."""
    if shard_size_max < 1:
        raise ValueError("shard_size_max must be positive")
    groups: list[list[RawTensor]] = [[]]
    size = 0
    for tensor in sorted(read_tensors(weights), key=lambda t: t.name):
        if groups[-1] and size + len(tensor.data) > shard_size_max:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += len(tensor.data)
    if len(groups) == 1:
        return {"model.safetensors": write_tensorfile(groups[0], WEIGHTS_METADATA)}
    count = len(groups)
    return {f"model-{index:05d}-of-{count:05d}.safetensors": write_tensorfile(group,
                                                                              WEIGHTS_METADATA)
            for index, group in enumerate(groups, start=1)}


def check_weights(manifest: Manifest, files: Mapping[str, bytes]) -> ModelDescription:
    """Check the architecture, the manifest and the weight files against each other (rule 3)."""
    description = describe_model(manifest)
    expected = expected_tensors(description.architecture, description.config)
    declared = {t.name: t for t in manifest.tensors}
    for name in sorted(set(expected) ^ set(declared)):
        where = "the manifest" if name in declared else "the architecture"
        raise WeightsMismatchError(name, f"only {where} has it")
    for name, (dtype, shape) in expected.items():
        if (declared[name].dtype, declared[name].shape) != (dtype, shape):
            raise WeightsMismatchError(name, f"manifest says {declared[name].dtype} "
                                       f"{list(declared[name].shape)}, the architecture "
                                       f"{dtype} {list(shape)}")
    sizes = {f.name: f.size for f in manifest.files}
    if set(files) != set(sizes):
        raise WeightsMismatchError(None, f"weight files {sorted(files)} are not the "
                                   f"manifest's {sorted(sizes)}")
    for file_name, data in files.items():
        _check_file(file_name, data, sizes[file_name], declared)
    return description


def _check_file(file_name: str, data: bytes, size: int,
                declared: Mapping[str, TensorSpec]) -> None:
    if len(data) != size:
        raise WeightsMismatchError(None, f"{file_name}: {len(data)} bytes, manifest says {size}")
    try:
        entries = parse_header(data).entries
    except TensorFileError as error:
        raise WeightsMismatchError(None, f"{file_name}: {error}") from None
    wanted = {name for name, spec in declared.items() if spec.file == file_name}
    for name in sorted(set(entries) ^ wanted):
        where = file_name if name in entries else "the manifest"
        raise WeightsMismatchError(name, f"only {where} has it")
    for name in wanted:
        entry, spec = entries[name], declared[name]
        if (entry.dtype, entry.shape) != (spec.dtype, spec.shape):
            raise WeightsMismatchError(name, f"{file_name} holds {entry.dtype} "
                                       f"{list(entry.shape)}, manifest says {spec.dtype} "
                                       f"{list(spec.shape)}")


def store_file(data: bytes, put: Put) -> Cid:
    """Store ``data`` as a UnixFS file (the CID ``ipfs add --raw-leaves`` gives)."""
    return add_chunks([data], put).root


def publish_model(put: Put, *, name: str, architecture: str, config: Mapping[str, Any],
                  weights: bytes, owner: bytes, tolerance: Tolerance | None = None,
                  lineage: Mapping[str, Any] | None = None,
                  shard_size_max: int = SHARD_SIZE_MAX) -> PublishedModel:
    """Weights (one safetensors file) and an architecture to a manifest plus weight files,
    all stored through ``put`` (e.g. ``BlockStore.put``); see rule 2."""
    shards = shard_weights(weights, shard_size_max)
    files = tuple(WeightFile(name=file_name, cid=store_file(data, put), size=len(data))
                  for file_name, data in shards.items())
    tensors = tuple(TensorSpec(name=entry.name, dtype=entry.dtype, shape=entry.shape,
                               file=file_name)
                    for file_name, data in shards.items()
                    for entry in parse_header(data).entries.values())
    manifest = Manifest(name=name, architecture=architecture,
                        config=model_config(architecture, config, tolerance=tolerance,
                                            lineage=lineage),
                        tensors=tensors, files=files, owner=owner)
    check_weights(manifest, shards)
    block = manifest_block(manifest)
    put(block)
    return PublishedModel(cid=block.cid, manifest=manifest, files=shards)


def fetch_model(cid: Cid, get_block: BlockGetter) -> ModelFiles:
    """Load a model's manifest and every weight file through ``get_block`` (each block
    verified against its CID), then check every tensor (rule 3)."""
    manifest = load_manifest(cid, get_block)
    files = {f.name: read_file(f.cid, get_block, size_max=f.size) for f in manifest.files}
    check_weights(manifest, files)
    return ModelFiles(manifest=manifest, files=files)


def publish_student(put: Put, *, name: str, owner: bytes, teacher: Cid, weights: bytes,
                    info: Mapping[str, Any], tolerance: Tolerance | None = None,
                    shard_size_max: int = SHARD_SIZE_MAX) -> PublishedModel:
    """Publish a distill job's student (``JobResult.outputs["student.safetensors"]`` and
    ``JobResult.info``) as a model whose manifest names its teacher (rule 1)."""
    student = info["student"]
    return publish_model(put, name=name, architecture=student["architecture"],
                         config=student["config"], weights=weights, owner=owner,
                         tolerance=tolerance,
                         lineage={**info["lineage"], "teacher": str(teacher)},
                         shard_size_max=shard_size_max)
