"""How the fusion pass sees one node: its fusion class, its row signature, its re-read factor.

The registry's :class:`~graphc.ops.FusionClass` is the start; a few ops are reclassified by what they do at
inference time:

- ``BatchNormalization`` in inference mode (one output) is a per-channel affine map: ELEMENTWISE (the
  registry says REDUCTION because training mode reduces over the batch);
- ``Identity`` and ``Dropout`` in inference mode (mask not read) copy their input: ELEMENTWISE;
- nodes with subgraphs (If/Loop/Scan), side effects, non-deterministic ops, unknown ops and ``FusedKernel``
  (already fused) are OPAQUE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...ir.graph import Node
from ...ir.types import TensorType
from ...ops import FusionClass, OpContext, lookup

ELEMENTWISE, INJECTIVE, REDUCTION, COMPLEX, OPAQUE = ("elementwise", "injective", "reduction", "complex", "opaque")

#: ops whose reductions run along axes of one input ("rows"): two of them may share a kernel when the rows agree
_ROW_REDUCE = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
_ROW_SOFTMAX = {"Softmax", "LogSoftmax", "Hardmax"}
_ROW_NORM = {"LayerNormalization", "RMSNormalization"}
#: windowed reductions: each input element is read by several output windows
_WINDOWED = {"MaxPool", "AveragePool", "LpPool", "LRN"}


def describe(node: Node) -> str:
    """``Conv 'res2a'`` (the op and the node's name, or its first output's name)."""
    label = node.name or next((o.name for o in node.outputs if o is not None), "")
    return f"{node.op_type} {label!r}" if label else node.op_type


def _context(node: Node) -> OpContext | None:
    opdef = lookup(node.domain, node.op_type)
    if opdef is None:
        return None
    try:
        return OpContext(node, opdef)
    except Exception:
        return None


def _const_false(v) -> bool:
    return v is None or (v.const is not None and not bool(np.asarray(v.const).reshape(-1)[0]))


def fusion_class(node: Node) -> str:
    opdef = lookup(node.domain, node.op_type)
    if opdef is None or node.subgraphs() or node.meta.get("side_effects") or opdef.side_effects \
            or not opdef.deterministic:
        return OPAQUE
    cls = opdef.fusion.value if isinstance(opdef.fusion, FusionClass) else str(opdef.fusion)
    if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
        ctx = _context(node)
        extra = any(o is not None for o in node.outputs[1:])
        training = True
        if ctx is not None:
            try:
                training = bool(opdef._training(ctx))  # type: ignore[attr-defined]
            except Exception:
                training = True
        return ELEMENTWISE if not training and not extra else REDUCTION
    if node.op_type in ("Identity", "Dropout") and node.domain in ("", "ai.onnx"):
        out = node.outputs[0] if node.outputs else None
        if out is None or not isinstance(out.type, TensorType):
            return cls
        returned = {id(v) for v in node.graph.outputs} if node.graph is not None else set()
        mask_used = any(o is not None and (o.uses or id(o) in returned) for o in node.outputs[1:])
        if node.op_type == "Dropout":
            training = node.opset >= 12 and len(node.inputs) > 2 and not _const_false(node.inputs[2])
            old = node.opset < 7 and not node.attrs.get("is_test", 0)
            if training or old or mask_used:
                return cls
        return ELEMENTWISE
    return cls


def _static_shape(v) -> tuple | None:
    if v is None or not isinstance(v.type, TensorType) or not v.type.is_static:
        return None
    return tuple(v.type.shape)


def row_signature(node: Node) -> tuple | None:
    """(input shape, reduced axes) for reductions along axes of one input, else None.

    Two reductions over the same shape and axes (the max and the sum of a softmax, the mean and the variance of
    a layer norm) can run in one row-wise kernel.
    """
    shape = _static_shape(node.inputs[0] if node.inputs else None)
    if shape is None:
        return None
    rank = len(shape)
    ctx = _context(node)
    if ctx is None:
        return None
    try:
        if node.op_type in _ROW_REDUCE:
            axes = ctx.opdef._axes(ctx, ctx.const(1))  # type: ignore[attr-defined]
            if axes == []:
                return None
            axes = range(rank) if axes is None else axes
        elif node.op_type in _ROW_SOFTMAX:
            axis = int(ctx.attr("axis")) % max(rank, 1)
            axes = [axis] if node.opset >= 13 else range(axis, rank)
        elif node.op_type in _ROW_NORM:
            axis = int(ctx.attr("axis", -1)) % max(rank, 1)
            axes = range(axis, rank)
        elif node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(ctx.attr("axis", 0)) % max(rank, 1)]
        else:
            return None
    except Exception:
        return None
    return shape, tuple(sorted({int(a) % rank for a in axes}))


def reread_factor(node: Node) -> float:
    """How many times a windowed reduction reads each input element (1 for everything else)."""
    if node.op_type not in _WINDOWED:
        return 1.0
    ctx = _context(node)
    if ctx is None:
        return 1.0
    if node.op_type == "LRN":
        return float(ctx.attr("size", 1))
    kernel = ctx.attr("kernel_shape") or []
    strides = ctx.attr("strides") or [1] * len(kernel)
    dilations = ctx.attr("dilations") or [1] * len(kernel)
    window = float(np.prod([int(k) for k in kernel])) if kernel else 1.0
    step = float(np.prod([max(int(s), 1) for s in strides])) if strides else 1.0
    del dilations  # dilation spreads a window, it does not change how often an element is read
    return max(window / step, 1.0)


def numel(v: Any) -> int | None:
    if v is None or not isinstance(v.type, TensorType) or v.type.shape is None:
        return None
    n = 1
    for d in v.type.shape:
        n *= d if isinstance(d, int) else 1
    return n
