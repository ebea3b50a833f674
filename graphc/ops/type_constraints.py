"""Checking a node's input types against its ONNX schema's type constraints.

ONNX schemas say, for each op and opset, which element types each input accepts and which inputs must share
a type (``T`` in ``MatMul(A: T, B: T)``). Checking them at import time turns "MatMul of float32 by int64" into
a compile-time error that names the node and the inputs, instead of whatever numpy makes of it at run time.
Inputs whose type is unknown are not checked; ops without an ONNX schema (graphc's own) are skipped.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx

from ..errors import ShapeInferenceError
from ..ir.types import OptionalType, SequenceType, TensorType, Type


@dataclass(frozen=True)
class _Formal:
    name: str
    type_str: str
    variadic: bool
    homogeneous: bool


@functools.lru_cache(maxsize=None)
def _signature(domain: str, op_type: str, opset: int):
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:
        return None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    formals = tuple(_Formal(p.name, p.type_str, p.option == variadic, p.is_homogeneous) for p in schema.inputs)
    allowed = {c.type_param_str: frozenset(c.allowed_type_strs) for c in schema.type_constraints}
    return formals, allowed


def type_string(t: Type | None) -> str | None:
    """The ONNX type string of an IR type (``tensor(float)``, ``seq(tensor(int64))``...), None if unknown."""
    if isinstance(t, TensorType):
        if t.dtype is None:
            return None
        from ..ir.types import dtype_to_onnx

        try:
            return f"tensor({onnx.TensorProto.DataType.Name(dtype_to_onnx(t.dtype)).lower()})"
        except Exception:
            return None
    if isinstance(t, SequenceType):
        inner = type_string(t.elem)
        return None if inner is None else f"seq({inner})"
    if isinstance(t, OptionalType):
        inner = type_string(t.elem)
        return None if inner is None else f"optional({inner})"
    return None


def check_input_types(node) -> None:
    """Raise ShapeInferenceError when an input's type breaks the node's ONNX type constraints."""
    signature = _signature(node.domain, node.op_type, node.opset or 1)
    if signature is None:
        return
    formals, allowed = signature
    bound: dict[str, tuple[str, int]] = {}
    for index, value in enumerate(node.inputs):
        if value is None or not formals:
            continue
        formal = formals[min(index, len(formals) - 1)]
        if index >= len(formals) and not formal.variadic:
            raise ShapeInferenceError(f"{node.op_type} node {node.name!r} has {len(node.inputs)} inputs; "
                                      f"opset {node.opset} defines {len(formals)}")
        actual = type_string(value.type)
        if actual is None:
            continue
        options = allowed.get(formal.type_str, frozenset({formal.type_str}))
        if actual not in options:
            raise ShapeInferenceError(
                f"{node.op_type} node {node.name!r}: input {index} ({value.name!r}) is {actual}, but "
                f"{formal.name}: {formal.type_str} takes only {', '.join(sorted(options))}")
        if formal.type_str in allowed and (not formal.variadic or formal.homogeneous):
            first = bound.setdefault(formal.type_str, (actual, index))
            if first[0] != actual:
                raise ShapeInferenceError(
                    f"{node.op_type} node {node.name!r}: input {index} ({value.name!r}) is {actual}, but input "
                    f"{first[1]} is {first[0]} and both are {formal.type_str}")
