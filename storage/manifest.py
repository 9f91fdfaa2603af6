"""Model manifests: one small canonical object that names everything a model is made of.

Rules:
1. A manifest is stored as one raw block (codec 0x55) whose bytes are canonical msgpack:
   maps with sorted keys, tensors sorted by name, files sorted by name, floats only inside
   ``config`` and only finite ones (float64). Decoding re-encodes and refuses any other
   byte form, so a manifest has exactly one CID.
2. Everything is checked when built and when decoded: sizes (``MANIFEST_SIZE_MAX``,
   counts, string lengths, shape rank), the dtype vocabulary, unique names, each tensor's
   file is listed, the owner is a 32-byte Ed25519 public key.
3. The weight files are UnixFS files referenced by root CID; the manifest holds no other
   link. Fetching a model is: fetch the manifest block, then each file's DAG.

Rejected alternative: dag-cbor (0x71) with real IPLD links, which would let ``ipfs dag
export`` follow the files. It needs a general CBOR codec (floats, nesting) for little gain:
our CAR export already takes several roots, and the raw block still moves through IPFS.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from storage.cid import CODEC_RAW, Cid
from storage.errors import InvalidCidError, InvalidManifestError
from storage.unixfs import Block, BlockGetter

MANIFEST_KIND = "prsm/model-manifest/1"
MANIFEST_SIZE_MAX = 1024 * 1024
"""One block, at most our chunk size: a manifest is fetched and verified in one piece."""
TENSORS_MAX = 65_536
"""Large checkpoints have a few thousand tensors (a 70B Llama: ~700)."""
FILES_MAX = 4096
NAME_SIZE_MAX = 512
SHAPE_RANK_MAX = 8
DIMENSION_MAX = 1 << 48
CONFIG_DEPTH_MAX = 8
CONFIG_ENTRIES_MAX = 16_384
OWNER_SIZE = 32
DTYPES = frozenset({
    "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
    "F8_E4M3", "F8_E5M2", "F16", "BF16", "F32", "F64",
})
"""The safetensors dtype names: the weight files are expected to be safetensors."""

_FILE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightFile:
    name: str  # relative path, e.g. "model-00001-of-00002.safetensors"
    cid: Cid  # root of the file's UnixFS DAG
    size: int

    def __post_init__(self) -> None:
        _check_name(self.name, "file name")
        if not _FILE_NAME.match(self.name) or ".." in self.name.split("/"):
            raise InvalidManifestError(f"file name {self.name!r} is not a relative path")
        if not isinstance(self.cid, Cid):
            raise InvalidManifestError("file cid must be a Cid")
        _check_int(self.size, 0, 1 << 62, "file size")


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # the WeightFile that holds it

    def __post_init__(self) -> None:
        _check_name(self.name, "tensor name")
        _check_name(self.file, "tensor file")
        if self.dtype not in DTYPES:
            raise InvalidManifestError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}")
        if not isinstance(self.shape, tuple) or len(self.shape) > SHAPE_RANK_MAX:
            raise InvalidManifestError(f"tensor {self.name!r}: shape must be a tuple of rank "
                                       f"<= {SHAPE_RANK_MAX}")
        for dimension in self.shape:
            _check_int(dimension, 0, DIMENSION_MAX, f"tensor {self.name!r} dimension")


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    name: str
    architecture: str  # e.g. "LlamaForCausalLM"
    config: Mapping[str, Any]
    tensors: tuple[TensorSpec, ...]
    files: tuple[WeightFile, ...]
    owner: bytes  # Ed25519 public key of the publisher (royalties go to it)

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_name(self.architecture, "architecture")
        if not isinstance(self.owner, bytes) or len(self.owner) != OWNER_SIZE:
            raise InvalidManifestError("owner must be a 32-byte Ed25519 public key")
        if not isinstance(self.config, Mapping):
            raise InvalidManifestError("config must be a map")
        _check_config(self.config, 0, [0])
        if len(self.tensors) > TENSORS_MAX or len(self.files) > FILES_MAX:
            raise InvalidManifestError("too many tensors or files")
        file_names = [f.name for f in self.files]
        if len(set(file_names)) != len(file_names):
            raise InvalidManifestError("duplicate file name")
        tensor_names = [t.name for t in self.tensors]
        if len(set(tensor_names)) != len(tensor_names):
            raise InvalidManifestError("duplicate tensor name")
        known = set(file_names)
        for tensor in self.tensors:
            if tensor.file not in known:
                raise InvalidManifestError(f"tensor {tensor.name!r}: file {tensor.file!r} "
                                           "is not in files")


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str) or not 0 < len(value.encode()) <= NAME_SIZE_MAX:
        raise InvalidManifestError(f"{what} must be a non-empty string of <= "
                                   f"{NAME_SIZE_MAX} bytes")


def _check_int(value: object, low: int, high: int, what: str) -> None:
    if type(value) is not int or not low <= value < high:
        raise InvalidManifestError(f"{what} must be an int in [{low}, {high})")


def _check_config(value: object, depth: int, entries: list[int]) -> None:
    """JSON-like values only; finite floats; bounded depth and entry count."""
    entries[0] += 1
    if depth > CONFIG_DEPTH_MAX or entries[0] > CONFIG_ENTRIES_MAX:
        raise InvalidManifestError("config too deep or too large")
    if value is None or isinstance(value, bool | str):
        return
    if type(value) is int:
        _check_int(value, -(1 << 63), 1 << 64, "config integer")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidManifestError("config floats must be finite")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_config(item, depth + 1, entries)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidManifestError("config keys must be strings")
            _check_config(item, depth + 1, entries)
    else:
        raise InvalidManifestError(f"config value of type {type(value).__name__}")


# -- encoding -----------------------------------------------------------------------------


def _sorted_config(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _sorted_config(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_sorted_config(item) for item in value]
    return value


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical bytes (rule 1)."""
    body = {
        "architecture": manifest.architecture,
        "config": _sorted_config(manifest.config),
        "files": [{"cid": f.cid.to_bytes(), "name": f.name, "size": f.size}
                  for f in sorted(manifest.files, key=lambda f: f.name)],
        "kind": MANIFEST_KIND,
        "name": manifest.name,
        "owner": manifest.owner,
        "tensors": [{"dtype": t.dtype, "file": t.file, "name": t.name, "shape": list(t.shape)}
                    for t in sorted(manifest.tensors, key=lambda t: t.name)],
    }
    data = msgpack.packb(body, use_bin_type=True)
    if len(data) > MANIFEST_SIZE_MAX:
        raise InvalidManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_SIZE_MAX}")
    return data


def manifest_block(manifest: Manifest) -> Block:
    """The manifest as a block: its CID is the model's address."""
    data = encode_manifest(manifest)
    return Block(Cid.for_block(CODEC_RAW, data), data)


def _unpack(data: bytes) -> dict[str, Any]:
    if len(data) > MANIFEST_SIZE_MAX:
        raise InvalidManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_SIZE_MAX}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_str_len=MANIFEST_SIZE_MAX, max_bin_len=MANIFEST_SIZE_MAX,
                               max_array_len=TENSORS_MAX, max_map_len=CONFIG_ENTRIES_MAX,
                               max_ext_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            UnicodeDecodeError, TypeError) as error:
        raise InvalidManifestError(f"not msgpack: {error}") from None
    if not isinstance(body, dict) or body.get("kind") != MANIFEST_KIND:
        raise InvalidManifestError(f"not a {MANIFEST_KIND} object")
    expected = {"architecture", "config", "files", "kind", "name", "owner", "tensors"}
    if set(body) != expected:
        raise InvalidManifestError(f"fields must be exactly {sorted(expected)}")
    return body


def _field(item: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(item, dict) or set(item) != keys:
        raise InvalidManifestError(f"each {what} must be a map of {sorted(keys)}")
    return item


def decode_manifest(data: bytes) -> Manifest:
    """Parse and validate; refuse non-canonical bytes (rule 1)."""
    body = _unpack(data)
    if not isinstance(body["files"], list) or not isinstance(body["tensors"], list):
        raise InvalidManifestError("files and tensors must be lists")
    try:
        files = tuple(WeightFile(name=f["name"], cid=Cid.from_bytes(f["cid"]), size=f["size"])
                      for f in (_field(f, {"cid", "name", "size"}, "file")
                                for f in body["files"]))
    except (InvalidCidError, TypeError) as error:
        raise InvalidManifestError(f"file cid: {error}") from None
    tensors = []
    for item in body["tensors"]:
        tensor = _field(item, {"dtype", "file", "name", "shape"}, "tensor")
        if not isinstance(tensor["shape"], list):
            raise InvalidManifestError("tensor shape must be a list")
        tensors.append(TensorSpec(name=tensor["name"], dtype=tensor["dtype"],
                                  shape=tuple(tensor["shape"]), file=tensor["file"]))
    manifest = Manifest(name=body["name"], architecture=body["architecture"],
                        config=body["config"], tensors=tuple(tensors), files=files,
                        owner=body["owner"])
    if encode_manifest(manifest) != data:
        raise InvalidManifestError("manifest bytes are not in canonical form")
    return manifest


def load_manifest(cid: Cid, get_block: BlockGetter) -> Manifest:
    """Fetch, verify against ``cid`` and decode a manifest."""
    if cid.codec != CODEC_RAW:
        raise InvalidManifestError(f"{cid}: a manifest is a raw block")
    data = get_block(cid)
    cid.verify(data)
    return decode_manifest(data)
