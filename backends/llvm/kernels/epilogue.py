"""Epilogues: the elementwise tail of a GEMM/conv body, applied to runs of the anchor's values in registers.

The contract (docs in /work/notes/llvm_contract.md)::

    epi = Epilogue(kb, body, anchor, inner)
    epi.nodes              # the tail nodes, in body order
    epi.emit(flat, acc)    # acc: the anchor's values at flat .. flat + W - 1 (a scalar, or a <W x T> vector)

``anchor`` is the body value the complex op produces; ``inner`` promises that every run passed to ``emit``
lies inside one aligned block of ``inner`` consecutive elements of the anchor's flat (C-order) index.

Accepted tails (anything else raises :class:`~..kernel.Unsupported` in the constructor):

- every body node but the anchor's producer is an op of :mod:`.elementwise` or a zero-cost view
  (Reshape/Unsqueeze/... of an operand, see :mod:`.pointwise`); nothing may run before the producer;
- every node's result broadcasts to the anchor's shape, every body output other than the anchor has the
  anchor's shape (so outputs are stored at ``flat`` like the anchor);
- every operand read from memory is, over one block, either constant (a per-channel bias over H*W: one
  scalar load, splat) or contiguous with the anchor (a residual: one vector load at its own offset);
- ``inner`` is the product of trailing axes of the anchor's shape, or divides its last axis.

``emit`` reads every operand of the run before storing any output (in-place safe), and stores the anchor
itself when it is a body output. Offsets of operands are computed from ``flat`` with constant divisions (no
loop state), so the caller may call ``emit`` from any loop structure.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Value
from ..kernel import I64, KernelBuilder, Unsupported, llvm_type
from .mathfns import Lanes
from .pointwise import PointwiseBody, _as_storage, _itemsize, _typed_vector_ptr, broadcast_strides


def _ancestors(node) -> set[int]:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        for x in n.inputs:
            p = getattr(x, "producer", None) if x is not None else None
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return seen


class Epilogue:
    """See the module docstring."""

    def __init__(self, kb: KernelBuilder, body: Graph, anchor: Value, inner: int):
        self.kb = kb
        self.anchor = anchor
        producer = anchor.producer
        if producer is None or not any(producer is n for n in body.nodes):
            raise Unsupported("the anchor is not produced inside the body")
        before = _ancestors(producer)
        self.nodes = [n for n in body.nodes if n is not producer]
        if any(id(n) in before for n in self.nodes):
            raise Unsupported("nodes run before the anchor's producer")
        self.anchor_stored = any(o is anchor for o in body.outputs)
        self._input_ids = {id(v) for v in body.inputs}
        outputs = [o for o in body.outputs if o is not anchor]
        external = list(body.inputs) + list(body.outputs)
        ext_ids = {id(v) for v in external}
        self.shape = tuple(kb.shape(anchor) if self.anchor_stored else kb.program.static_shape(anchor) or ())
        if not self.shape and kb.program.static_shape(anchor) is None:
            raise Unsupported("the anchor has no static shape")
        self.dtype = np.dtype(anchor.type.dtype)
        llvm_type(self.dtype)

        def shape_of(v):
            return kb.shape(v) if id(v) in ext_ids else kb.program.static_shape(v)

        self.body = PointwiseBody(self.nodes, list(body.inputs), outputs, self.shape, shape_of,
                                  self._const_of, seeded=[anchor])
        self.inner = int(inner)
        self._classify()

    def _const_of(self, v: Value):
        if id(v) not in self._input_ids:  # values inside the body have no storage to look at
            return None
        st = self.kb.storage(v)
        spec = self.kb.program.slots[st.slot]
        return spec.array if spec.kind == "const" and spec.array is not None and spec.array.size else None

    def _classify(self) -> None:
        shape = self.shape
        rank = len(shape)
        total = int(np.prod(shape, dtype=np.int64))
        if self.inner <= 0 or (total and total % self.inner):
            raise Unsupported(f"inner {self.inner} does not divide the anchor's {total} elements")
        block_axes = None
        for k in range(rank, -1, -1):
            if int(np.prod(shape[k:], dtype=np.int64)) == self.inner:
                block_axes = list(range(k, rank))
                break
        if block_axes is None:
            if rank and shape[-1] % self.inner == 0:
                block_axes = [rank - 1]
            else:
                raise Unsupported(f"inner {self.inner} is not a block of trailing axes of {shape}")
        c_strides = [int(np.prod(shape[a + 1:], dtype=np.int64)) for a in range(rank)]
        self.c_strides = c_strides
        self.kind = {}
        self.strides = {}
        for key, src in self.body.sources.items():
            st = broadcast_strides(src.shape, shape)
            live = [a for a in block_axes if shape[a] > 1]
            if all(st[a] == 0 for a in live):
                self.kind[key] = "constant"
            elif all(st[a] == c_strides[a] for a in live):
                self.kind[key] = "contiguous"
            else:
                raise Unsupported(f"operand {src.value.name!r} {src.shape} is neither constant nor contiguous "
                                  f"over blocks of {self.inner} elements of {shape}")
            self.strides[key] = st

    # -- code ---------------------------------------------------------------------------------------------------
    def _offset(self, b: ir.IRBuilder, flat: ir.Value, strides: list[int]) -> ir.Value:
        off = ir.Constant(I64, 0)
        for a, n in enumerate(self.shape):
            if n <= 1 or strides[a] == 0:
                continue
            idx = b.udiv(flat, ir.Constant(I64, self.c_strides[a])) if self.c_strides[a] != 1 else flat
            if a > 0:
                idx = b.urem(idx, ir.Constant(I64, n))
            off = b.add(off, b.mul(idx, ir.Constant(I64, strides[a])))
        return off

    def emit(self, flat: ir.Value, acc: ir.Value) -> None:
        kb = self.kb
        b = kb.builder
        lanes = acc.type.count if isinstance(acc.type, ir.VectorType) else 1
        ln = Lanes(kb.module, b, lanes)
        if acc.type != ln.of(self.dtype):
            raise Unsupported(f"accumulator of type {acc.type} for an anchor of dtype {self.dtype}")
        loaded = {}
        for key, src in self.body.sources.items():
            p = b.gep(kb.ptr(src.value), [self._offset(b, flat, self.strides[key])], inbounds=True)
            if self.kind[key] == "constant" or lanes == 1:
                loaded[key] = ln.splat(b.load(p, align=_itemsize(p)))
            else:
                loaded[key] = b.load(_typed_vector_ptr(b, p, lanes), align=_itemsize(p))
        results = self.body.evaluate(ln, loaded, {id(self.anchor): acc})
        stores = [(self.anchor, acc)] if self.anchor_stored else []
        stores += list(zip(self.body.outputs, results))
        for o, r in stores:
            p = b.gep(kb.ptr(o), [flat], inbounds=True)
            b.store(_as_storage(ln, r, kb.dtype(o)), _typed_vector_ptr(b, p, lanes) if lanes > 1 else p,
                    align=_itemsize(p))

    @classmethod
    def identity(cls, kb: KernelBuilder, body: Graph, anchor: Value) -> "Epilogue":
        """An epilogue of a body whose only node produces ``anchor`` (kept for the contract; inner is moot)."""
        return cls(kb, body, anchor, int(np.prod(kb.shape(anchor), dtype=np.int64)) or 1)
