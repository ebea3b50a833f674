"""Mixed precision: the dot-product ops (MatMul, Gemm, Conv) take bfloat16 operands, accumulate in float32.

Requires: ``shapes_inferred``. Ensures: ``precision_lowered``. Invalidates: nothing (no value changes type:
activations stay float32 in memory; what changes is how the marked nodes compute).

Runs when ``precision="mixed"`` (the pipeline adds it after the simplifications and before fusion, so that the
fused kernels inherit the marks). One switch for the whole model, not a per-layer setting:

- a **marked** node (``node.meta["precision"] = "bf16"``) rounds its two matrix operands (MatMul/Gemm A and B,
  Conv X and W) to bfloat16, nearest even, and accumulates their products in float32. Its bias (Gemm C, Conv
  B), alpha/beta and the elementwise epilogue fused after it stay float32;
- candidates are MatMul, Gemm and Conv with float32 operands and result. A candidate stays float32 (logged,
  with the reason) when it is a depthwise convolution (one input channel per output: a memory-bound loop with
  no long dot product to speed up) or its reduction is shorter than ``MIN_K`` (rounding would cost accuracy
  and save nothing);
- everything else stays float32: Softmax, LayerNorm and BatchNorm statistics, exp/log/tanh, reductions and
  elementwise chains read and write float32, so the "fp32 islands" that half precision needs around ops that
  overflow are every non-dot-product op here. bfloat16 has float32's exponent range: a rounded operand
  cannot overflow, it loses mantissa bits (8 kept of 24: a relative error of at most 2**-9 per operand).

Backends: llvm runs marked nodes with AVX512-BF16's ``vdpbf16ps`` (two products per fp32 lane and
instruction) where the CPU has it, else it widens the pairs back to float32 (same rounding, fp32 speed); the
reference backend rounds the operands the same way, so it is the oracle of the mixed mode; the cuda backend
does not implement mixed precision yet (an OptionError at compile time).

The pass logs one summary decision: the marked nodes, the candidates kept in float32 and why, and the share
of the model's FLOPs that now runs in bfloat16. The compile pipeline adds the measured error against
float32 (``report()["precision"]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analysis import node_cost, symbolic_dims_as_one
from ..ir.graph import Graph, Node
from ..ir.types import TensorType
from .base import Pass, PassContext
from .registry import register_pass

DOT_OPS = ("MatMul", "Gemm", "Conv")
MIN_K = 16  # shorter reductions stay float32
F32 = np.dtype(np.float32)


def _is_f32(value) -> bool:
    return value is not None and isinstance(value.type, TensorType) and value.type.dtype == F32


def reduction_length(node: Node) -> int | None:
    """K of a MatMul/Gemm/Conv (the length of each output's dot product), None when not static."""
    a, w = node.inputs[0], node.inputs[1]
    if node.op_type == "Conv":
        shape = w.type.shape if isinstance(w.type, TensorType) else None
        if shape is None or not all(isinstance(d, int) for d in shape[1:]):
            return None
        return int(np.prod(shape[1:]))
    shape = a.type.shape if isinstance(a.type, TensorType) else None
    if not shape or not isinstance(shape[-1], int):
        return None
    if node.op_type == "Gemm" and node.attrs.get("transA"):
        return shape[0] if isinstance(shape[0], int) else None
    return int(shape[-1])


def keeps_fp32(node: Node) -> str | None:
    """Why candidate ``node`` stays float32, or None when it takes bf16 operands."""
    if len(node.inputs) < 2 or not all(_is_f32(v) for v in node.inputs[:2]) or not _is_f32(node.outputs[0]):
        return "operands or result are not float32"
    if node.op_type == "Conv":
        group = int(node.attrs.get("group", 1) or 1)
        w_shape = node.inputs[1].type.shape
        if group > 1 and w_shape is not None and w_shape[1] == 1:
            return "depthwise convolution: memory-bound, no long dot product to speed up"
    k = reduction_length(node)
    if k is None:
        return "reduction length is not static"
    if k < MIN_K:
        return f"reduction of {k} < {MIN_K}: rounding would cost accuracy and save nothing"
    return None


@register_pass
class MixedPrecision(Pass):
    """Mixed precision: MatMul/Gemm/Conv take bfloat16 operands with float32 accumulation (precision="mixed").

    Requires ``shapes_inferred``; ensures ``precision_lowered``. See the module docstring for the rules.
    """

    name = "precision"
    #: ``precision_check``: after compiling, measure the error against float32 on one seeded input
    #: (graphc/precision.py; the compile pipeline reads it)
    options = {"precision_check": True}
    requires = frozenset({"shapes_inferred"})
    ensures = frozenset({"precision_lowered"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if ctx.precision == "fp32":
            self.log(ctx, "precision fp32: nothing to lower")
            return False
        if ctx.precision != "mixed":
            self.log(ctx, f"precision {ctx.precision!r} is not lowered by this pass")
            return False
        marked: list[str] = []
        kept: dict[str, str] = {}
        flops_total = flops_bf16 = 0
        with symbolic_dims_as_one(graph):
            for node in graph.walk():
                flops = node_cost(node).flops
                flops_total += flops
                if node.domain not in ("", "ai.onnx") or node.op_type not in DOT_OPS:
                    continue
                reason = keeps_fp32(node)
                if reason is not None:
                    kept[node.name or node.op_type] = reason
                    node.meta.pop("precision", None)
                    continue
                node.meta["precision"] = "bf16"
                marked.append(node.name or node.op_type)
                flops_bf16 += flops
        summary: dict[str, Any] = {
            "mode": "mixed", "compute_dtype": "bfloat16", "accumulate_dtype": "float32",
            "storage_dtype": "float32", "bf16_nodes": marked, "fp32_dot_nodes": kept,
            "bf16_flops_fraction": round(flops_bf16 / flops_total, 4) if flops_total else 0.0,
        }
        self.log(ctx, f"{len(marked)} dot-product node(s) take bfloat16 operands ({len(kept)} kept float32); "
                      f"{summary['bf16_flops_fraction']:.1%} of the FLOPs", summary=summary)
        return bool(marked)
