"""Fused emitter "rowwise": a fused body of kind "reduction" as one row-wise kernel.

The fusion pass groups reductions over the same rows with their elementwise producers and consumers: a
decomposed Softmax or LayerNorm (ReduceMean -> Sub -> Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul -> Add, as
PyTorch exports it before opset 17), a residual Add before a LayerNormalization, a GELU or scaling after it.
This emitter runs such a body as the :mod:`.rowwise` loop nest over the rows of the reductions' common input
shape S and axes A: one pass per statistic (each reduction's, in body order; Softmax and LayerNormalization
bring two each), then one pass that computes and stores the body's full-size outputs. Everything between is
recomputed from the body's inputs at each element of each pass, in registers: the row (a few KB) stays in
cache, so the inputs are read from memory once.

Every body value gets a class:

- ``full``: S's elements (any shape of S's size: Reshape/Squeeze/Unsqueeze/Flatten/Identity and transposes
  that only move size-1 dims keep the flat order), indexed by the element's flat offset;
- ``row``: one value per row (a reduction's output, or the body input of that shape), indexed by the row;
- ``param``: a smaller body input (a weight or a broadcast operand): a single value, a vector along the
  contiguous reduced run (LayerNorm's scale), or along the contiguous kept run in column mode.

Declined (the body is then split into nodes, each generated on its own): reductions over other axes or shapes,
keepdims=0 outputs read inside the body, ops other than the elementwise ones of :mod:`.elementwise`, the
reductions, Softmax/LogSoftmax and LayerNormalization, params broadcast in any other way, mixed stat dtypes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Node, Value
from ....ops.reduce import softmax_axes
from ..kernel import Unsupported, fused_emitter, llvm_type
from . import elementwise as ew
from .mathfns import Lanes
from .normalization import mean_var_stats
from .reduce import REDUCE_OPS, _stats, reduce_axes
from .rowwise import Arith, RowProgram, RowStore, Stat, emit_rows, layout_of, node_context

_VIEWS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose"}
_ROW_OPS = set(REDUCE_OPS) | {"Softmax", "LogSoftmax", "LayerNormalization"}


def _strip(shape) -> tuple:
    shape = list(shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    return tuple(shape)


@dataclass
class _Ctx:
    """Where values are evaluated: at an element (pos) or for a row (pos has only ``out``), with the finished
    statistics ``vals``; ``cache`` holds the values already built at this point."""

    pos: object
    vals: list
    element: bool
    cache: dict = field(default_factory=dict)


class _RowOut:
    def __init__(self, out):
        self.out = out


class RowBody:
    def __init__(self, kb, kernel: Node, body: Graph):
        self.kb = kb
        self.body = body
        self.outer_of = {id(i): o for i, o in zip(body.inputs, kernel.inputs)}
        self.inputs = {id(v) for v in body.inputs}
        self.consumers: dict[int, int] = {}
        for n in body.nodes:
            for x in n.inputs:
                if x is not None:
                    self.consumers[id(x)] = self.consumers.get(id(x), 0) + 1
        rows = [n for n in body.nodes if n.op_type in _ROW_OPS]
        if not rows:
            raise Unsupported("no reduction in the body")
        first = rows[0]
        self.S = self.shape(first.inputs[0])
        self.A = self._axes(first)
        self.layout = layout_of(self.S, self.A)
        if self.layout.count <= 1 or self.layout.nout == 0:
            raise Unsupported("rows of one element, or nothing to do")
        self.N = math.prod(self.S)
        self.row_shape = tuple(1 if i in self.A else d for i, d in enumerate(self.S))
        dtypes = {np.dtype(n.inputs[0].type.dtype) for n in rows}
        if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise Unsupported(f"statistics in dtypes {dtypes}")
        self.ar = Arith(kb, next(iter(dtypes)))
        self.cls: dict[int, str] = {}
        self.calls: dict[int, ew.OpCall] = {}
        self.stats: list[Stat] = []
        self.stat_index: dict[int, int] = {}  # id(node) -> index of its first statistic
        for n in body.nodes:
            self._classify(n)

    # -- shapes and classes -------------------------------------------------------------------------------
    def shape(self, v: Value) -> tuple:
        s = self.kb.shape(v) if id(v) in self.inputs or v.is_constant else self.kb.program.static_shape(v)
        if s is None:
            raise Unsupported(f"{v.name!r} has no static shape")
        return tuple(s)

    def const_of(self, v: Value):
        outer = self.outer_of.get(id(v))
        return self.kb.const_value(outer if outer is not None else v)

    def _axes(self, node: Node) -> list[int]:
        rank = len(self.shape(node.inputs[0]))
        ctx = node_context(node)
        if node.op_type in REDUCE_OPS:
            axes = reduce_axes(self.kb, node, ctx, rank)
            if axes == []:
                raise Unsupported("no-op reduction")
            return axes
        if node.op_type == "LayerNormalization":
            axis = int(ctx.attr("axis"))
            if not -rank <= axis < rank:
                raise Unsupported("axis out of range")
            return list(range(axis % rank, rank))
        axis = int(ctx.attr("axis"))
        if not rank or not -rank <= axis < rank:
            raise Unsupported("axis out of range")
        return sorted(softmax_axes(ctx, rank))

    def leaf_class(self, v: Value) -> str:
        shape = self.shape(v)
        n = math.prod(shape)
        if n == self.N:
            return "full"
        return "row" if self._row_pattern(shape) else "param"

    def _row_pattern(self, shape) -> bool:
        """Does a smaller tensor broadcast onto S exactly as one value per row?"""
        if len(shape) > len(self.S):
            return False
        pad = (1,) * (len(self.S) - len(shape)) + tuple(shape)
        return pad == self.row_shape

    def class_of(self, v: Value) -> str:
        if id(v) not in self.cls:
            if id(v) in self.inputs or v.is_constant or v.producer is None:
                self.cls[id(v)] = self.leaf_class(v)
            else:
                raise Unsupported(f"{v.name!r} read before it is computed")
        return self.cls[id(v)]

    def _classify(self, n: Node) -> None:
        op = n.op_type
        if n.domain not in ("", "ai.onnx") or n.subgraphs():
            raise Unsupported(f"{op} in a row body")
        outs = [o for o in n.outputs if o is not None]
        if op in _ROW_OPS:
            if self.shape(n.inputs[0]) != self.S or sorted(self._axes(n)) != sorted(self.A):
                raise Unsupported(f"{op} over other rows than the body's first reduction")
            if self.class_of(n.inputs[0]) != "full":
                raise Unsupported(f"{op} input is not full-size")
            self.stat_index[id(n)] = len(self.stats)
            self.stats.extend(self._node_stats(n))
            for k, o in enumerate(outs):
                if op in REDUCE_OPS or (op == "LayerNormalization" and o is not n.outputs[0]):
                    shape = self.shape(o)
                    if not self._row_pattern(shape) and self.consumers.get(id(o)):
                        raise Unsupported("keepdims=0 output read inside the body")
                    self.cls[id(o)] = "row"
                else:
                    self.cls[id(o)] = "full"
            return
        if op in _VIEWS:
            x = n.inputs[0]
            if op == "Transpose":
                perm = node_context(n).attr("perm")
                in_shape = self.shape(x)
                perm = list(perm) if perm else list(reversed(range(len(in_shape))))
                moved = [d for d in perm if in_shape[d] != 1]
                if moved != sorted(moved):
                    raise Unsupported("a transpose that moves data")
            if self.class_of(x) != "full" or math.prod(self.shape(outs[0])) != self.N:
                raise Unsupported(f"{op} of a value that is not full-size")
            self.cls[id(outs[0])] = "full"
            return
        try:
            call = ew.op_call(n, self.const_of)
        except Unsupported:
            raise
        except Exception as exc:  # noqa: BLE001 - anything odd about the node: decline it
            raise Unsupported(f"{op}: {exc}") from None
        self.calls[id(n)] = call
        classes = {self.class_of(x) for x in n.inputs if x is not None}
        for o in outs:
            size = math.prod(self.shape(o))
            if "full" in classes:
                if size != self.N:
                    raise Unsupported(f"{op} output of {size} elements in rows of {self.N}")
                if "row" in classes and _strip(self.shape(o)) != _strip(self.S):
                    raise Unsupported(f"{op} broadcasts a row value onto another shape than the rows'")
                self.cls[id(o)] = "full"
            elif "row" in classes:
                if not self._row_pattern(self.shape(o)):
                    raise Unsupported(f"{op} mixes a row value with a param")
                self.cls[id(o)] = "row"
            else:
                raise Unsupported(f"{op} computes a param (left to constant folding)")

    def _node_stats(self, n: Node) -> list[Stat]:
        ar, count, op = self.ar, self.layout.count, n.op_type
        u = n.inputs[0]
        k0 = len(self.stats)
        if op in REDUCE_OPS:
            own = _stats(op, ar.dtype, count)
        elif op in ("Softmax", "LogSoftmax"):
            own = [Stat(float("-inf"), "max", lambda ar, x, v, p: x,
                        lambda ar, m, v: ar.b.select(ar.isfinite(m), m, ar.const(0))),
                   Stat(0, "add", lambda ar, x, v, p: ar.exp(ar.sub(x, v[0])),
                        (lambda ar, s, v: ar.log(s)) if op == "LogSoftmax" else None)]
        else:
            if any(np.dtype(x.type.dtype) != ar.dtype for x in n.inputs if x is not None):
                raise Unsupported("LayerNormalization with mixed dtypes")
            if any(o is not None and np.dtype(o.type.dtype) != ar.dtype for o in n.outputs):
                raise Unsupported("LayerNormalization statistics in another dtype")
            own = mean_var_stats(count, float(node_context(n).attr("epsilon")))
        if np.dtype(u.type.dtype) != ar.dtype:
            raise Unsupported("reduction input dtype differs")

        def wrap(s: Stat) -> Stat:
            def elem(ar, x, vals, pos):
                return s.elem(ar, self.value(u, _Ctx(pos, vals, True)), vals[k0:], pos)

            final = (lambda ar, acc, vals: s.final(ar, acc, vals[k0:])) if s.final else None
            return Stat(s.init, s.combine, elem, final)

        return [wrap(s) for s in own]

    # -- evaluation -----------------------------------------------------------------------------------------
    def value(self, v: Value, ctx: _Ctx, out_shape=None):
        """v's LLVM value at ctx; ``out_shape``: the shape of the op reading v (how a param broadcasts)."""
        cls = self.class_of(v)
        key = id(v) if cls != "param" else (id(v), out_shape)  # a param's index depends on its reader
        if key in ctx.cache:
            return ctx.cache[key]
        if cls == "full" and not ctx.element:
            raise Unsupported(f"{v.name!r} is needed per element in a per-row value")
        producer = v.producer if id(v) not in self.inputs and not v.is_constant else None
        if producer is None:
            out = self._leaf(v, cls, ctx, out_shape)
        elif producer.op_type in _VIEWS:
            out = self.value(producer.inputs[0], ctx)
        elif producer.op_type in _ROW_OPS:
            out = self._row_op_value(producer, v, ctx)
        else:
            call = self.calls[id(producer)]
            shape = self.shape(next(o for o in producer.outputs if o is not None))
            args = [None if x is None else self.value(x, ctx, shape) for x in producer.inputs]
            results = ew.emit_op(Lanes(self.kb.module, self.kb.builder, 1), call, args)
            for o, r in zip(producer.outputs, results):
                if o is not None and r is not None:
                    ctx.cache[id(o)] = r
            out = ctx.cache.get(key)
            if out is None:
                raise Unsupported(f"{producer.op_type} did not compute {v.name!r}")
        ctx.cache[key] = out
        return out

    def _leaf(self, v: Value, cls: str, ctx: _Ctx, out_shape):
        b = self.kb.builder
        const = self.const_of(v)
        dtype = np.dtype(v.type.dtype)
        if const is not None and const.size == 1:
            return Lanes(self.kb.module, b, 1).dconst(dtype, np.asarray(const).reshape(-1)[0]) \
                if dtype != np.bool_ else ir.Constant(llvm_type(dtype), int(bool(np.asarray(const).reshape(-1)[0])))
        ptr = self.kb.ptr(v)
        if cls == "full":
            index = ctx.pos.flat
        elif cls == "row":
            index = ctx.pos.out
        else:
            index = self._param_index(v, ctx, out_shape)
        return b.load(b.gep(ptr, [index], inbounds=True))

    def _param_index(self, v: Value, ctx: _Ctx, out_shape):
        """Index of a param at the current element, broadcast onto ``out_shape`` (the consuming op's output,
        S's flat order): its shape, leading 1s aside, must be a suffix of out_shape, so that it is indexed by
        the flat offset modulo its size T; that is the place in the row when T is the row's (or, in column
        mode, the inner run's) length, and a modulo hoisted out of the innermost loop when T is a multiple."""
        shape = self.shape(v)
        n = math.prod(shape)
        if n == 1:
            return self.kb.i64(0)
        if not ctx.element or out_shape is None:
            raise Unsupported("a param in a per-row value")
        trimmed = list(shape)
        while trimmed and trimmed[0] == 1:
            trimmed.pop(0)
        lay, pos, b = self.layout, ctx.pos, self.kb.builder
        if len(trimmed) > len(out_shape):
            raise Unsupported(f"param of shape {shape} does not broadcast to {out_shape}")
        if tuple(trimmed) != tuple(out_shape[len(out_shape) - len(trimmed):]):
            return self._digits_index(pos.flat, tuple(trimmed), tuple(out_shape))
        run, at = (lay.inner, pos.i) if lay.column else (lay.row if lay.J == 1 else 0, pos.l)
        if run and n == run:
            return at
        if run and n % run == 0:  # flat - at is constant along the innermost loop
            return b.add(b.urem(b.sub(pos.flat, at), self.kb.i64(n)), at)
        return b.urem(pos.flat, self.kb.i64(n))

    def _digits_index(self, flat, pshape: tuple, out_shape: tuple):
        """The general broadcast: the param's offset from the digits of ``flat`` in out_shape's mixed radix
        (a divide and a remainder by constants per dim the param varies along)."""
        b, kb = self.kb.builder, self.kb
        pad = (1,) * (len(out_shape) - len(pshape)) + pshape
        if any(p not in (1, o) for p, o in zip(pad, out_shape)):
            raise Unsupported(f"param of shape {pshape} does not broadcast to {out_shape}")
        index = kb.i64(0)
        ostride, pstride = 1, 1
        for o, p in zip(reversed(out_shape), reversed(pad)):
            if p != 1:
                digit = b.urem(b.udiv(flat, kb.i64(ostride)), kb.i64(o)) if ostride > 1 else b.urem(flat, kb.i64(o))
                index = b.add(index, b.mul(digit, kb.i64(pstride)))
                pstride *= p
            ostride *= o
        return index

    def _row_op_value(self, node: Node, v: Value, ctx: _Ctx):
        ar = self.ar
        k = self.stat_index[id(node)]
        op = node.op_type
        if op in REDUCE_OPS:
            return ctx.vals[k + len(_stats(op, ar.dtype, self.layout.count)) - 1]
        if op in ("Softmax", "LogSoftmax"):
            d = ar.sub(self.value(node.inputs[0], ctx), ctx.vals[k])
            return ar.sub(d, ctx.vals[k + 1]) if op == "LogSoftmax" else ar.div(ar.exp(d), ctx.vals[k + 1])
        mean, inv = ctx.vals[k], ctx.vals[k + 1]
        if v is not node.outputs[0]:
            return mean if v is node.outputs[1] else inv
        y = ar.mul(ar.mul(ar.sub(self.value(node.inputs[0], ctx), mean), inv),
                   self.value(node.inputs[1], ctx, self.S))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            y = ar.add(y, self.value(node.inputs[2], ctx, self.S))
        return y

    # -- the kernel ---------------------------------------------------------------------------------------------
    def emit(self) -> None:
        full_outs = [o for o in self.body.outputs if self.class_of(o) == "full"]
        row_outs = [o for o in self.body.outputs if self.class_of(o) == "row"]
        if len(full_outs) + len(row_outs) != len(self.body.outputs):
            raise Unsupported("a body output that is a param")
        for o in self.body.outputs:
            if math.prod(self.kb.shape(o)) != (self.N if self.class_of(o) == "full" else self.layout.nout):
                raise Unsupported(f"output {o.name!r} has an unexpected size")
        stores = [RowStore(self.kb.ptr(o), None,
                           lambda ar, vals, out, o=o: self.value(o, _Ctx(_RowOut(out), vals, False)))
                  for o in row_outs]
        ptrs = [self.kb.ptr(o) for o in full_outs]

        def write_outputs(ar, x, vals, pos):
            ctx = _Ctx(pos, vals, True)
            results = [self.value(o, ctx) for o in full_outs]  # every input read before any store
            for ptr, r in zip(ptrs, results):
                ar.b.store(r, ar.b.gep(ptr, [pos.flat], inbounds=True))

        prog = RowProgram(self.stats, stores, write_outputs if full_outs else None)
        emit_rows(self.kb, self.layout, None, self.ar.dtype, self.ar, prog,
                  grain=max(1, 1024 // self.layout.count))


@fused_emitter("rowwise")
def emit_fused_rows(kb, kernel: Node, body: Graph) -> None:
    if kernel.attrs.get("kind") != "reduction":
        raise Unsupported("not a reduction body")
    RowBody(kb, kernel, body).emit()
