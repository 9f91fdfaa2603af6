"""torch tensors to and from safetensors bytes (imports torch: worker and publisher side).

Rules:
1. Writing goes through ``tensorfile.write_tensorfile`` (canonical bytes); reading goes
   through ``tensorfile.parse_header`` first (our checks), then ``safetensors.torch.load``
   (the reference parser). Nothing is ever unpickled.
2. Only dense, contiguous CPU tensors are written; views are copied, so a tensor's bytes
   are its own and never a slice of a larger storage.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Mapping

import safetensors
import safetensors.torch
import torch

from prsm_node.jobs.errors import TensorFileError
from prsm_node.jobs.manifests import ModelDescription, check_weights
from prsm_node.jobs.models import build_model
from prsm_node.jobs.tensorfile import RawTensor, parse_header, write_tensorfile
from storage.manifest import Manifest

assert sys.byteorder == "little", "safetensors is little-endian; so is every target machine"

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
    "F32": torch.float32, "F64": torch.float64,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {value: key for key, value in TORCH_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise TensorFileError(f"torch dtype {dtype} has no safetensors name")
    return DTYPE_NAMES[dtype]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The little-endian bytes of ``tensor`` (rule 2). ctypes copies straight from the
    data pointer: no numpy, which the CPU wheel does not bring."""
    dense = tensor.detach().to("cpu").contiguous()
    size = dense.numel() * dense.element_size()
    return ctypes.string_at(dense.data_ptr(), size) if size else b""


def to_safetensors(tensors: Mapping[str, torch.Tensor],
                   metadata: Mapping[str, str] | None = None) -> bytes:
    """A state dict (or any named tensors) as canonical safetensors bytes."""
    return write_tensorfile(
        (RawTensor(name=name, dtype=dtype_name(t.dtype), shape=tuple(t.shape),
                   data=tensor_bytes(t)) for name, t in tensors.items()), metadata)


def from_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after our header checks (rule 1)."""
    parse_header(data)
    try:
        return safetensors.torch.load(bytes(data))
    except (safetensors.SafetensorError, ValueError, TypeError) as error:
        raise TensorFileError(f"safetensors refused the file: {error}") from None


def load_model(manifest: Manifest, files: Mapping[str, bytes]
               ) -> tuple[torch.nn.Module, ModelDescription]:
    """Build a model from its manifest and weight files: every tensor is checked against
    the manifest and the architecture before the module is built (``check_weights``), and
    ``load_state_dict`` is strict. The module is in eval mode, on the CPU."""
    description = check_weights(manifest, files)
    model = build_model(description.architecture, description.config)
    state: dict[str, torch.Tensor] = {}
    for data in files.values():
        state |= from_safetensors(data)
    model.load_state_dict(state, strict=True)
    return model, description
