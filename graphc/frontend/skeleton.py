"""The model as ONNX's checker and shape inference get to see it: every node and type, but not the big weights.

``onnx.checker.check_model`` and ``onnx.shape_inference.infer_shapes`` take a ModelProto whole: each serialises
it, the C++ side parses that copy, and inference serialises its result back, so on ResNet-50 they cost about
three transient copies of the 100 MB of weights (and ``ModelProto.ByteSize`` is one more: upb computes it by
serialising). Neither needs the weights' *values*, only their names, types and shapes, so :func:`checkable_copy`
hands them a copy in which each large top-level initializer is declared as a typed graph input instead.

What stays exactly as it was, so that the checker's verdicts and inference's types do not change:
- every node, function, value_info, input and output, and every small initializer (at most
  :data:`LARGE_TENSOR_BYTES`): shape inference reads *values* from those (Reshape's shape, Slice's starts,
  ConstantOfShape's input), which are small (a 64 KB int64 tensor is 8192 values; ONNX's data propagation
  tracks shape-sized tensors);
- any initializer the checker has something to say about: an unnamed or duplicated one, one whose data fields
  are not exactly ``raw_data`` (or, for external data, none), one of undefined or string type, and under IR
  version 3 one missing from the graph inputs.
A stripped initializer's own decoding is checked by the importer (``tensor_to_array``: size against dims), and
a stripped external one's location is checked here, before anything else, as strictly as the importer does.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
from onnx import helper

from .external_data import resolve_location

#: Initializers larger than this (declared bytes) are replaced by typed graph inputs in the checkable copy.
LARGE_TENSOR_BYTES = 1 << 16

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def declared_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's type and dims call for (sub-byte types rounded up to a byte each); None when the
    type is unknown or the dims are negative. Reads no data: upb copies a bytes field on every access."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - unknown or undefined data_type: not ours to judge here
        return None
    count = 1
    for d in tensor.dims:
        if d < 0:
            return None
        count *= int(d)
    return count * itemsize


def _external_location(tensor: onnx.TensorProto) -> str | None:
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def _strippable(tensor: onnx.TensorProto, names: collections.Counter, inputs: set[str], ir_version: int) -> bool:
    """Whether the checker would accept this initializer on its own, and it is large: then its type is all the
    checker and inference need. Everything that could make the checker complain keeps the tensor in."""
    if not tensor.name or names[tensor.name] > 1:
        return False
    if ir_version <= 3 and tensor.name not in inputs:  # "in initializer but not in graph input"
        return False
    if tensor.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING) or tensor.HasField("segment"):
        return False
    size = declared_nbytes(tensor)
    if size is None or size <= LARGE_TENSOR_BYTES:
        return False
    if any(len(getattr(tensor, field)) for field in _TYPED_FIELDS):
        return False
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return not tensor.HasField("raw_data") and _external_location(tensor) is not None
    return tensor.HasField("raw_data")


def checkable_copy(model: onnx.ModelProto, base_dir: str | None) -> onnx.ModelProto:
    """A copy of ``model`` whose large top-level initializers are typed graph inputs (see the module doc).

    The external data of a stripped tensor is not read, but its location is checked (a
    :class:`~graphc.errors.ModelLoadError` if it points outside the model's directory or nowhere).
    """
    graph = model.graph
    inputs = {vi.name for vi in graph.input}
    names = collections.Counter(t.name for t in graph.initializer)
    names.update(s.values.name for s in graph.sparse_initializer)

    copy = onnx.ModelProto()
    # field by field, leaving the initializers out: copying the model whole and then deleting them would
    # allocate the weights once more, which is what this copy is for avoiding
    _copy_fields(model, copy, skip="graph")
    light = copy.graph
    _copy_fields(graph, light, skip="initializer")
    for tensor in graph.initializer:
        if not _strippable(tensor, names, inputs, model.ir_version):
            light.initializer.append(tensor)
            continue
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            resolve_location(base_dir, _external_location(tensor), tensor.name)
        if tensor.name not in inputs:
            light.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return copy


def _copy_fields(source, target, skip: str) -> None:
    """Every set field of ``source`` but ``skip`` into the empty ``target`` (fields added to ONNX later too)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            if isinstance(value, bytes) and field.type == field.TYPE_STRING:
                # not valid UTF-8 (upb hands such strings back as bytes and will not take them back); names are
                # the checker's business only as far as being non-empty, and the importer reports the bytes
                value = value.decode("utf-8", "replace")
            setattr(target, field.name, value)
