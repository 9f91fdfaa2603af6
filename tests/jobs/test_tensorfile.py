"""The pure safetensors reader and writer: canonical bytes, strict header checks, interop."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from prsm_node.jobs.errors import TensorFileError
from prsm_node.jobs.tensorfile import RawTensor, parse_header, read_tensors, write_tensorfile
from prsm_node.jobs.tensors import from_safetensors, to_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            "ids": torch.tensor([[1, 2], [3, 4]], dtype=torch.int64),
            "flag": torch.tensor([True, False]),
            "empty": torch.zeros(0, 5)}


def _file(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_written_files_load_in_the_reference_parser_and_back() -> None:
    data = to_safetensors(_tensors(), {"format": "pt"})
    for loaded in (safetensors.torch.load(data), from_safetensors(data)):
        assert set(loaded) == set(_tensors())
        for name, tensor in _tensors().items():
            assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype
    assert parse_header(data).metadata == {"format": "pt"}


def test_the_same_tensors_always_give_the_same_bytes() -> None:
    forward = to_safetensors(_tensors())
    backward = to_safetensors(dict(reversed(list(_tensors().items()))))
    assert forward == backward
    assert write_tensorfile(read_tensors(forward)) == forward


def test_every_tensor_is_aligned_to_its_item_size() -> None:
    data = to_safetensors(_tensors())
    parsed = parse_header(data)
    assert parsed.data_start % 8 == 0
    sizes = {"F32": 4, "BF16": 2, "I64": 8, "BOOL": 1}
    for entry in parsed.entries.values():
        assert entry.begin % sizes[entry.dtype] == 0


def test_a_view_is_written_as_its_own_values() -> None:
    base = torch.arange(20, dtype=torch.float32).reshape(4, 5)
    view = base[1:3, ::2]
    assert torch.equal(from_safetensors(to_safetensors({"v": view}))["v"], view)


@pytest.mark.parametrize(("data", "match"), [
    (b"\x01", "shorter"),
    (struct.pack("<Q", 1 << 40), "exceeds"),
    (struct.pack("<Q", 100) + b"{}", "past the end"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)),
     "data bytes"),
    (_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)),
     "4 bytes for shape"),
    (_file({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
     "unknown dtype"),
    (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
     "hole or an overlap"),
    (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
     "hole or an overlap"),
    (_file({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
     "non-negative"),
    (_file({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, bytes(4)),
     "exactly"),
    (_file({"__metadata__": {"k": 1}}), "strings"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not JSON"),
    (struct.pack("<Q", 26) + b'{"a": {}, "a": {}}        ', "duplicate"),
])
def test_malformed_headers_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(TensorFileError, match=match):
        parse_header(data)


def test_a_pickle_is_refused_and_never_unpickled(tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(TensorFileError):
        from_safetensors(path.read_bytes())


def test_writing_refuses_a_wrong_byte_count() -> None:
    with pytest.raises(TensorFileError, match="bytes for shape"):
        write_tensorfile([RawTensor(name="a", dtype="F32", shape=(2,), data=bytes(7))])
