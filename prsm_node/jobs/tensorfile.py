"""The safetensors file format in pure Python: read a header, slice a tensor, write a file.

Rules:
1. No torch, no numpy: the node checks weights and compares job outputs without them.
2. A header is checked completely before any tensor is used (the same rules as the Rust
   reference, ``safetensors::tensor::SafeTensors::deserialize``): the 8-byte little-endian
   length is capped and within the data, the JSON object has no duplicate names, each
   entry has exactly ``dtype``, ``shape`` and ``data_offsets``, the dtype is known, each
   byte range is exactly ``prod(shape) * itemsize`` long, and the ranges tile the data
   buffer from 0 to its end with no hole or overlap.
3. Writing is canonical: tensors ordered by item size (largest first) then name, so every
   tensor is aligned to its item size after the 8-byte-aligned header (as the reference
   writer does); the header JSON is compact with sorted keys and padded with spaces to a
   multiple of 8. The same tensors always give the same bytes, hence the same CID.

Rejected alternative: ``safetensors.torch.save``. In safetensors 0.8 it converts through
numpy, which the CPU torch wheel does not install; the format is small enough to own.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prsm_node.jobs.errors import TensorFileError
from storage.manifest import DTYPES, SHAPE_RANK_MAX, TENSORS_MAX

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
assert set(DTYPE_SIZES) == DTYPES, "the manifest's dtype vocabulary is the safetensors one"

HEADER_SIZE_MAX = 16 * 1024 * 1024
"""TENSORS_MAX entries of ~200 bytes each fit; the reference caps at 100 MB."""
METADATA_KEY = "__metadata__"
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data buffer (after the header)
    end: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorFile:
    """A parsed header: the entries by name, the metadata, where the data buffer starts."""

    entries: Mapping[str, TensorEntry]
    metadata: Mapping[str, str]
    data_start: int

    def tensor_bytes(self, data: bytes | memoryview, name: str) -> memoryview:
        """The raw little-endian bytes of tensor ``name`` inside ``data`` (no copy)."""
        entry = self.entries[name]
        return memoryview(data)[self.data_start + entry.begin:self.data_start + entry.end]


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise TensorFileError(f"duplicate name {key!r} in the header")
        result[key] = value
    return result


def _read_header(data: bytes | memoryview) -> tuple[dict[str, object], int]:
    if len(data) < 8:
        raise TensorFileError("shorter than the 8-byte header length")
    (header_size,) = struct.unpack_from("<Q", data, 0)
    if header_size > HEADER_SIZE_MAX:
        raise TensorFileError(f"header of {header_size} bytes exceeds {HEADER_SIZE_MAX}")
    if 8 + header_size > len(data):
        raise TensorFileError(f"header of {header_size} bytes runs past the end of the file")
    try:
        header = json.loads(bytes(data[8:8 + header_size]).decode("utf-8"),
                            object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as error:
        if isinstance(error, TensorFileError):
            raise
        raise TensorFileError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise TensorFileError("header is not a JSON object")
    return header, 8 + header_size


def _entry(name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise TensorFileError(f"{name!r}: entry must have exactly {sorted(_ENTRY_KEYS)}")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise TensorFileError(f"{name!r}: unknown dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > SHAPE_RANK_MAX
            or any(type(d) is not int or d < 0 for d in shape)):
        raise TensorFileError(f"{name!r}: shape must be a list of <= {SHAPE_RANK_MAX} "
                              "non-negative ints")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or any(type(o) is not int or o < 0 for o in offsets) or offsets[0] > offsets[1]):
        raise TensorFileError(f"{name!r}: data_offsets must be [begin, end] with begin <= end")
    entry = TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=offsets[0],
                        end=offsets[1])
    if entry.end - entry.begin != element_count(entry.shape) * DTYPE_SIZES[dtype]:
        raise TensorFileError(f"{name!r}: {entry.end - entry.begin} bytes for shape "
                              f"{list(entry.shape)} of {dtype}")
    return entry


def parse_header(data: bytes | memoryview) -> TensorFile:
    """Parse and check the header of the safetensors file ``data`` (rule 2)."""
    header, data_start = _read_header(data)
    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TensorFileError("__metadata__ must map strings to strings")
    if len(header) > TENSORS_MAX:
        raise TensorFileError(f"more than {TENSORS_MAX} tensors")
    entries = {name: _entry(name, raw) for name, raw in header.items()}
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise TensorFileError(f"{entry.name!r}: data starts at {entry.begin}, expected "
                                  f"{position} (a hole or an overlap)")
        position = entry.end
    if data_start + position != len(data):
        raise TensorFileError(f"tensors cover {position} data bytes, the file has "
                              f"{len(data) - data_start}")
    return TensorFile(entries=entries, metadata=metadata, data_start=data_start)


@dataclass(frozen=True, slots=True, kw_only=True)
class RawTensor:
    """One tensor to write: its little-endian bytes with their dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


def write_tensorfile(tensors: Iterable[RawTensor],
                     metadata: Mapping[str, str] | None = None) -> bytes:
    """The canonical safetensors bytes of ``tensors`` (rule 3)."""
    ordered = sorted(tensors, key=lambda t: (-DTYPE_SIZES[t.dtype], t.name))
    header: dict[str, object] = {}
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    position = 0
    for tensor in ordered:
        size = element_count(tensor.shape) * DTYPE_SIZES[tensor.dtype]
        if len(tensor.data) != size:
            raise TensorFileError(f"{tensor.name!r}: {len(tensor.data)} bytes for shape "
                                  f"{list(tensor.shape)} of {tensor.dtype}")
        if tensor.name in header:
            raise TensorFileError(f"duplicate tensor name {tensor.name!r}")
        header[tensor.name] = {"data_offsets": [position, position + size],
                               "dtype": tensor.dtype, "shape": list(tensor.shape)}
        position += size
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *(t.data for t in ordered)])


def read_tensors(data: bytes | memoryview) -> list[RawTensor]:
    """Every tensor of a checked file, as raw bytes (for re-sharding without torch)."""
    parsed = parse_header(data)
    return [RawTensor(name=e.name, dtype=e.dtype, shape=e.shape,
                      data=parsed.tensor_bytes(data, e.name))
            for e in parsed.entries.values()]
