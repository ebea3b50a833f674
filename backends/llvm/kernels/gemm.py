"""MatMul and Gemm (float32) on the shared microkernel, alone or with their fused elementwise tail.

- MatMul: 2-D, batched and broadcast (numpy.matmul semantics, 1-D operands included);
- Gemm: transA/transB/alpha/beta and a C bias broadcast to (M, N);
- constant operands (weights) are packed into microkernel panels at compile time; a runtime A is packed per
  thread, a runtime B is read in place (or packed by blocks when transposed);
- "complex+epilogue" bodies anchored on a MatMul/Gemm apply the tail to each finished tile run (alpha and the
  C bias first, as the anchor's own value), see :mod:`.tails`.

Small M (1..7 rows: batch-1 FC layers, decoding projections) uses a wider, shorter microkernel (e.g. 1 x 128)
so that the pre-packed weights stream once, split over threads by columns.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Node
from ....ops import OpContext, lookup
from ..kernel import F32, KernelBuilder, Unsupported, fused_emitter, node_emitter
from .gemm_driver import (ConstA, ConstB, DirectB, PackedB, RuntimeA, c64, emit_gemm, plan_gemm, runs_in_bf16,
                          threads_of)
from .microkernel import VEC, splat
from .tails import StoreTail, anchor_of, body_tail, check_no_overlap, const_in_body, width_of

F32_DT = np.dtype(np.float32)


def _broadcast_index(batch: tuple, own: tuple) -> np.ndarray:
    """For each flat index of ``batch``, the flat index into an operand with batch dims ``own``."""
    n_own = math.prod(own)
    if not batch:
        return np.zeros(1, np.int64)
    idx = np.arange(n_own, dtype=np.int64).reshape(own) if own else np.zeros((), np.int64)
    return np.broadcast_to(idx, batch).reshape(-1).copy()


def _splat_const(x: float, like: ir.Value) -> ir.Value:
    if isinstance(like.type, ir.VectorType):
        return ir.Constant(like.type, [float(x)] * like.type.count)
    return ir.Constant(F32, float(x))


def build_gemm(kb: KernelBuilder, node: Node, make_tail, const_of) -> None:
    """Emit ``node`` (MatMul or Gemm); ``make_tail(inner)`` gives the object whose ``emit(flat, acc)`` takes the
    results (runs never cross a row of N outputs, so ``inner`` is N)."""
    ctx = OpContext(node, lookup(node.domain, node.op_type))
    a_val, b_val = node.inputs[0], node.inputs[1]
    for v in (a_val, b_val):
        if kb.dtype(v) != F32_DT:
            raise Unsupported("only float32 GEMMs")
    a_shape, b_shape = kb.shape(a_val), kb.shape(b_val)
    a_const, b_const = const_of(a_val), const_of(b_val)
    alpha, beta, c_val = 1.0, 1.0, None
    trans_a = trans_b = False
    if node.op_type == "Gemm":
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise Unsupported("Gemm needs 2-D operands")
        trans_a, trans_b = bool(ctx.attr("transA")), bool(ctx.attr("transB"))
        alpha, beta = float(ctx.attr("alpha")), float(ctx.attr("beta"))
        c_val = node.inputs[2] if len(node.inputs) > 2 else None
        if c_val is not None and (beta == 0.0 or kb.dtype(c_val) != F32_DT):
            if kb.dtype(c_val) != F32_DT:
                raise Unsupported("Gemm C is not float32")
            c_val = None
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise Unsupported("MatMul of a scalar")
    a2 = (1,) + a_shape if len(a_shape) == 1 else a_shape
    b2 = b_shape + (1,) if len(b_shape) == 1 else b_shape
    if trans_a:
        k, m = a2
    else:
        m, k = a2[-2:]
    if trans_b:
        n, k2 = b2
    else:
        k2, n = b2[-2:]
    if k != k2:
        raise Unsupported("inner dimensions differ")
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    nb = math.prod(batch)
    if m * n * nb == 0 or k == 0:
        raise Unsupported("empty GEMM")
    a_idx, b_idx = _broadcast_index(batch, a2[:-2]), _broadcast_index(batch, b2[:-2])
    g = plan_gemm(m, n, k, nb, threads_of(kb), bf16=runs_in_bf16(node))
    tail = make_tail(n)

    if a_const is not None:
        mats = np.asarray(a_const, np.float32).reshape((-1,) + a2[-2:])
        mats = mats.transpose(0, 2, 1) if trans_a else mats
        a_src = ConstA(kb, mats, a_idx, g.mr, g.bf16)
    else:
        rs, cs = (1, m) if trans_a else (k, 1)
        a_src = RuntimeA(kb, kb.ptr(a_val), a_idx * (m * k), rs, cs, m, k, g.mr, g.bf16)
    if b_const is not None:
        mats = np.asarray(b_const, np.float32).reshape((-1,) + b2[-2:])
        mats = mats.transpose(0, 2, 1) if trans_b else mats
        b_src = ConstB(kb, mats, b_idx, g.nr, g.bf16)
    elif trans_b:
        b_src = PackedB(kb, kb.ptr(b_val), b_idx * (n * k), 1, k, k, g.nc)
    else:
        b_src = DirectB(kb, kb.ptr(b_val), b_idx * (k * n), n)

    c_ptr = kb.ptr(c_val) if c_val is not None else None
    if c_val is not None:
        cs2 = (1,) * (2 - len(kb.shape(c_val))) + kb.shape(c_val)
        if len(cs2) != 2 or cs2[0] not in (1, m) or cs2[1] not in (1, n):
            raise Unsupported("Gemm C does not broadcast to (M, N)")
        c_sm = cs2[1] if cs2[0] == m and m > 1 else 0
        c_sn = 1 if cs2[1] == n and n > 1 else 0

    def sink(kb, bi, row, col, acc):
        b = kb.builder
        flat = b.add(b.add(b.mul(bi, c64(m * n)), b.mul(row, c64(n))), col)
        if alpha != 1.0:
            acc = b.fmul(acc, _splat_const(alpha, acc))
        if c_ptr is not None:
            off = b.add(b.mul(row, c64(c_sm)), b.mul(col, c64(c_sn)))
            w = width_of(acc)
            if w and c_sn:
                cv = b.load(b.bitcast(b.gep(c_ptr, [off], inbounds=True), ir.VectorType(F32, w).as_pointer()),
                            align=4)
            else:
                cv = b.load(b.gep(c_ptr, [off], inbounds=True), align=4)
                cv = splat(b, cv, w) if w else cv
            if beta != 1.0:
                cv = b.fmul(cv, _splat_const(beta, cv))
            acc = b.fadd(acc, cv)
        tail.emit(flat, acc)

    emit_gemm(kb, g, a_src, b_src, sink)


@node_emitter("MatMul", "Gemm")
def emit_matmul_node(kb: KernelBuilder, node: Node) -> None:
    out = node.outputs[0]
    check_no_overlap(kb, [out], node.inputs)
    build_gemm(kb, node, lambda inner: StoreTail(kb, out), kb.const_value)


@fused_emitter("gemm+epilogue")
def emit_gemm_body(kb: KernelBuilder, kernel_node: Node, body: Graph) -> None:
    if kernel_node.attrs.get("kind") != "complex+epilogue":
        raise Unsupported("not a complex+epilogue body")
    anchor = anchor_of(body, ("MatMul", "Gemm"))
    check_no_overlap(kb, body.outputs, anchor.inputs)
    build_gemm(kb, anchor, lambda inner: body_tail(kb, body, anchor.outputs[0], inner),
               lambda v: const_in_body(kb, kernel_node, body, v))


__all__ = ["build_gemm", "VEC"]
