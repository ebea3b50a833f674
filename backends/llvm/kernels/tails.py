"""Where the GEMM/conv emitters send finished values: plain stores, or the fused body's elementwise tail.

- :class:`StoreTail`: a node emitter's output (``emit(flat, acc)`` stores ``acc`` at ``out + flat``);
- :func:`body_tail`: for a fused "complex+epilogue" body, the pointwise engineer's
  :class:`~.epilogue.Epilogue` when that module exists, else :class:`MiniTail` (an empty tail or a chain of
  Relu only), so that the common Conv+Relu bodies are fused either way;
- :func:`anchor_of`: the body's one Conv/MatMul/Gemm node and a helper to find the compile-time value of its
  inputs (body inputs alias the kernel node's inputs, which carry the constants).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Node, Value
from ..kernel import F32, I64, KernelBuilder, Unsupported
from .microkernel import VT

COMPLEX_OPS = ("Conv", "MatMul", "Gemm")


def vec_ptr(b: ir.IRBuilder, base: ir.Value, flat: ir.Value, width: int | None) -> ir.Value:
    p = b.gep(base, [flat], inbounds=True)
    return b.bitcast(p, ir.VectorType(F32, width).as_pointer()) if width else p


def width_of(acc: ir.Value) -> int | None:
    return acc.type.count if isinstance(acc.type, ir.VectorType) else None


class StoreTail:
    """Stores the anchor itself (a node emitter's output); ``nodes`` is empty."""

    nodes: list = []

    def __init__(self, kb: KernelBuilder, out: Value):
        if kb.dtype(out) != np.float32:
            raise Unsupported("output is not float32")
        self.kb, self.ptr = kb, kb.ptr(out)

    def emit(self, flat: ir.Value, acc: ir.Value) -> None:
        b = self.kb.builder
        b.store(acc, vec_ptr(b, self.ptr, flat, width_of(acc)), align=4)


class MiniTail:
    """An empty tail or a chain of Relu on the anchor: stores each body output (the anchor included)."""

    def __init__(self, kb: KernelBuilder, body: Graph, anchor: Value):
        self.kb = kb
        self.nodes = [n for n in body.nodes if anchor not in n.outputs]
        chain = [anchor]
        for n in self.nodes:
            if n.op_type != "Relu" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 1 \
                    or n.inputs[0] is not chain[-1]:
                raise Unsupported(f"tail node {n.op_type} needs the Epilogue module")
            chain.append(n.outputs[0])
        self.chain = chain
        self.stores = []
        for out in body.outputs:
            if not any(out is c for c in chain):
                raise Unsupported("a body output is not on the anchor's chain")
            if kb.dtype(out) != np.float32:
                raise Unsupported("output is not float32")
            self.stores.append((chain.index(out), kb.ptr(out)))

    def emit(self, flat: ir.Value, acc: ir.Value) -> None:
        b = self.kb.builder
        width = width_of(acc)
        vals = [acc]
        for _ in self.nodes:
            x = vals[-1]
            zero = ir.Constant(x.type, None)
            vals.append(b.select(b.fcmp_ordered("<", x, zero), zero, x))  # NaN stays NaN, like np.maximum
        for idx, ptr in self.stores:
            b.store(vals[idx], vec_ptr(b, ptr, flat, width), align=4)


def body_tail(kb: KernelBuilder, body: Graph, anchor: Value, inner: int):
    """The tail of a complex+epilogue body as an object with ``emit(flat, acc)``."""
    try:
        from .epilogue import Epilogue  # noqa: PLC0415 - written concurrently by the pointwise engineer
    except ImportError:
        return MiniTail(kb, body, anchor)
    return Epilogue(kb, body, anchor, inner)


def anchor_of(body: Graph, ops=COMPLEX_OPS) -> Node:
    """The body's complex node (first node, op in ``ops``, default domain, all its inputs body inputs)."""
    anchors = [n for n in body.nodes if n.op_type in COMPLEX_OPS and n.domain in ("", "ai.onnx")]
    if len(anchors) != 1 or anchors[0].op_type not in ops:
        raise Unsupported("body has no single anchor of this kind")
    node = anchors[0]
    inputs = {id(v) for v in body.inputs}
    if any(v is not None and id(v) not in inputs for v in node.inputs):
        raise Unsupported("the anchor reads a value computed in the body")
    return node


def const_in_body(kb: KernelBuilder, kernel_node: Node, body: Graph, value: Value | None) -> np.ndarray | None:
    """The compile-time contents of a body input (it stands for the kernel node's input at the same position)."""
    if value is None:
        return None
    if value.is_constant:
        return value.const
    for inner, outer in zip(body.inputs, kernel_node.inputs):
        if inner is value:
            return kb.const_value(outer)
    return None


def check_no_overlap(kb: KernelBuilder, outputs, inputs) -> None:
    """Decline when an output's memory overlaps an input's (the GEMM reads its inputs after writing outputs)."""
    for o in outputs:
        so = kb.storage(o)
        for i in inputs:
            if i is None or i.is_constant:
                continue
            si = kb.storage(i)
            if si.slot == so.slot and si.offset < so.offset + so.nbytes and so.offset < si.offset + si.nbytes:
                raise Unsupported(f"output {o.name} overlaps input {i.name}")


def i64c(n: int) -> ir.Constant:
    return ir.Constant(I64, int(n))


__all__ = ["StoreTail", "MiniTail", "body_tail", "anchor_of", "const_in_body", "check_no_overlap", "VT"]
