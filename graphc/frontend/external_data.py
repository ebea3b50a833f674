"""Reading tensors whose bytes live outside the .onnx file, strictly inside the model's directory.

An ONNX tensor may say ``location=weights.bin, offset=..., length=...``. A hostile model could point that at
``../../etc/passwd`` or an absolute path, or at a symlink leading out; all of those are refused, and a file too
short for the declared tensor is an error, not a short read.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelLoadError
from ..ir.types import dtype_from_onnx


def _external_fields(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def resolve_location(base_dir: str | None, location: str, tensor_name: str) -> str:
    if base_dir is None:
        raise ModelLoadError(
            f"tensor {tensor_name!r} keeps its data in external file {location!r}, but the model was not loaded "
            "from a file: pass the model's path instead of its bytes")
    if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise ModelLoadError(f"tensor {tensor_name!r}: external data location {location!r} must be a relative path "
                             "inside the model's directory")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise ModelLoadError(f"tensor {tensor_name!r}: external data location {location!r} leaves the model's "
                             "directory ('..' is refused)")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ModelLoadError(f"tensor {tensor_name!r}: external data {location!r} resolves outside the model's "
                             "directory (through a symlink?)")
    if not os.path.isfile(path):
        raise ModelLoadError(f"tensor {tensor_name!r}: external data file {location!r} not found next to the model")
    return path


def read_external_tensor(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    fields = _external_fields(tensor)
    path = resolve_location(base_dir, fields.get("location", ""), tensor.name)
    try:
        offset = int(fields.get("offset", 0) or 0)
        length = int(fields["length"]) if fields.get("length") else None
    except ValueError as exc:
        raise ModelLoadError(f"tensor {tensor.name!r}: bad external data offset/length ({exc})") from None
    dtype = dtype_from_onnx(tensor.data_type)
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"tensor {tensor.name!r} has negative dims {list(tensor.dims)}")
    expected = (count * dtype.itemsize) if dtype.itemsize and dtype != np.dtype(object) else None
    if dtype.name in ("int4", "uint4", "float4_e2m1fn", "int2", "uint2"):
        expected = None  # packed sub-byte types: numpy_helper unpacks them
    size = os.path.getsize(path)
    if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
        raise ModelLoadError(f"tensor {tensor.name!r}: external data range offset={offset} length={length} lies "
                             f"outside {fields.get('location')!r} ({size} bytes)")
    if length is None:
        length = expected if expected is not None else size - offset
    if expected is not None and length != expected:
        raise ModelLoadError(f"tensor {tensor.name!r}: external data holds {length} bytes, but its type and shape "
                             f"need {expected}")
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = raw
    return numpy_helper.to_array(inline)
