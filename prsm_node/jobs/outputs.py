"""Job outputs without torch: compare two results for a dispute, read generated text.

Rules:
1. Two outputs agree when they hold the same tensor names, dtypes and shapes; integer and
   bool tensors (token ids) are equal byte for byte; float tensors are equal elementwise
   within the model's tolerance: ``|a - b| <= atol + rtol * max(|a|, |b|)`` (symmetric:
   in a dispute neither side is the reference), NaN only against NaN, an infinity only
   against the same infinity. 8-bit floats are compared byte for byte.
2. Both files are parsed and checked (``tensorfile.parse_header``) before any value is
   read; the element count is capped (``COMPARE_ELEMENTS_MAX``) since this runs in pure
   Python on a node that may have no torch.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from dataclasses import dataclass

from prsm_node.jobs.errors import TensorFileError
from prsm_node.jobs.manifests import Tolerance
from prsm_node.jobs.tensorfile import TensorFile, element_count, parse_header

COMPARE_ELEMENTS_MAX = 1 << 24
"""16 M values: a few seconds of pure Python; job outputs (logits, tokens) are far smaller."""
_FLOAT_CODES = {"F32": "f", "F64": "d"}
assert sys.byteorder == "little"


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    equal: bool
    reason: str  # why not (empty when equal)
    tensor: str | None = None  # the first tensor that differs
    max_abs_difference: float = 0.0  # over all float tensors compared


def _array(code: str, data: bytes | bytearray | memoryview) -> array:
    """Values of little-endian ``data`` (``array(code, data)`` would take each byte as one
    value)."""
    values = array(code)
    values.frombytes(data)
    return values


def _floats(dtype: str, data: memoryview) -> array | list[float]:
    if dtype in _FLOAT_CODES:
        return _array(_FLOAT_CODES[dtype], data)
    if dtype == "BF16":  # the high half of a float32
        widened = bytearray(len(data) * 2)
        widened[2::4] = data[0::2]
        widened[3::4] = data[1::2]
        return _array("f", widened)
    return [value for (value,) in struct.iter_unpack("<e", data)]


def _close(a: float, b: float, tolerance: Tolerance) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tolerance.atol + tolerance.rtol * max(abs(a), abs(b))


def _parse(data: bytes, side: str) -> TensorFile:
    try:
        return parse_header(data)
    except TensorFileError as error:
        raise TensorFileError(f"output {side}: {error}") from None


def compare_outputs(a: bytes, b: bytes, tolerance: Tolerance) -> Comparison:
    """Do outputs ``a`` and ``b`` agree (rule 1)? Raises TensorFileError on a malformed one."""
    left, right = _parse(a, "a"), _parse(b, "b")
    if set(left.entries) != set(right.entries):
        return Comparison(equal=False, reason="different tensor names")
    total = sum(element_count(entry.shape) for entry in left.entries.values())
    if total > COMPARE_ELEMENTS_MAX:
        raise TensorFileError(f"{total} elements exceed {COMPARE_ELEMENTS_MAX}")
    worst = 0.0
    for name in sorted(left.entries):
        one, other = left.entries[name], right.entries[name]
        if (one.dtype, one.shape) != (other.dtype, other.shape):
            return Comparison(equal=False, reason="different dtype or shape", tensor=name)
        bytes_a, bytes_b = left.tensor_bytes(a, name), right.tensor_bytes(b, name)
        if one.dtype not in ("F16", "BF16", "F32", "F64"):
            if bytes_a != bytes_b:
                return Comparison(equal=False, reason="exact values differ", tensor=name,
                                  max_abs_difference=worst)
            continue
        for x, y in zip(_floats(one.dtype, bytes_a), _floats(one.dtype, bytes_b), strict=True):
            if not _close(x, y, tolerance):
                return Comparison(equal=False, reason=f"{x!r} and {y!r} differ beyond the "
                                  "tolerance", tensor=name, max_abs_difference=abs(x - y))
            if x != y and math.isfinite(x) and math.isfinite(y):
                worst = max(worst, abs(x - y))
    return Comparison(equal=True, reason="", max_abs_difference=worst)


def generated_bytes(output: bytes) -> list[bytes]:
    """The bytes a language-model inference generated, one item per prompt."""
    parsed = parse_header(output)
    entry = parsed.entries.get("tokens")
    if entry is None or entry.dtype != "I64" or len(entry.shape) != 2:
        raise TensorFileError("not a language-model output: no I64 [N, T] 'tokens'")
    values = _array("q", parsed.tensor_bytes(output, "tokens"))
    rows, width = entry.shape
    if any(not 0 <= value <= 255 for value in values):
        raise TensorFileError("'tokens' holds values outside 0..255")
    return [bytes(values[row * width:(row + 1) * width].tolist()) for row in range(rows)]
