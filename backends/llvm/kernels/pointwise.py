"""Pointwise kernels: whole fused elementwise bodies, and single elementwise nodes, as one vectorised loop nest.

:class:`PointwiseBody` is the analysis shared with :mod:`.epilogue`: it checks that every node is an op of
:mod:`.elementwise` (or a zero-cost view, below) whose output broadcasts to the iteration shape, lists the
tensors read from memory ("sources", each with the shape it is viewed with), and evaluates the nodes for one
block of lanes, keeping every internal value in registers.

- Broadcasting is numpy's (trailing axes aligned); BatchNormalization's per-channel operands are viewed as
  (C, 1, ..., 1). Views: Reshape/Flatten/Squeeze/Unsqueeze/Identity of a tensor read from memory cost nothing
  (same bytes, another shape), so an epilogue operand prepared by an Unsqueeze is read in place.
- Single-element compile-time constants become immediates (Pow's exponent, Clip's bounds, a scalar bias).

The loop nest (:func:`emit_pointwise`): the iteration shape with size-1 axes dropped and adjacent axes merged
wherever every operand's strides allow it (an all-same-shape body is one flat loop; a bias broadcast over
N, C, H*W is three); the outer axes flattened into rows, rows (or, when there are few, pieces of rows) split
between threads; the innermost axis contiguous, run as explicit ``<W x T>`` vectors (W = 16 with AVX-512, else
8) then a scalar remainder. Operands broadcast along the innermost axis are loaded once per row. Every input
of a lane block is loaded before any output of it is stored, so an output may share its input's memory.

Declines (:class:`~..kernel.Unsupported`): bodies with a node :mod:`.elementwise` declines, outputs of
different shapes, a node whose shape does not broadcast to the outputs', dtypes without storage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Node, Value
from ..jit import host_features
from ..kernel import KernelBuilder, Unsupported, fused_emitter, llvm_type, node_emitter
from . import elementwise as ew
from .mathfns import Lanes

VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def vector_width() -> int:
    return 16 if "avx512f" in host_features() else 8


def broadcast_strides(view: tuple[int, ...], shape: tuple[int, ...]) -> list[int] | None:
    """Element strides of a C-contiguous tensor of shape ``view`` read at the indices of ``shape`` (numpy
    broadcasting: trailing axes aligned, size-1 axes stride 0); None when ``view`` does not broadcast."""
    if len(view) > len(shape):
        if any(d != 1 for d in view[:len(view) - len(shape)]):
            return None
        view = view[len(view) - len(shape):]
    full = (1,) * (len(shape) - len(view)) + tuple(view)
    strides, step = [0] * len(shape), 1
    for axis in range(len(shape) - 1, -1, -1):
        if full[axis] == shape[axis]:
            strides[axis] = step if shape[axis] != 1 else 0
        elif full[axis] != 1:
            return None
        step *= full[axis]
    return strides


def contiguous_strides(shape) -> list[int]:
    strides, step = [0] * len(shape), 1
    for axis in range(len(shape) - 1, -1, -1):
        strides[axis] = step if shape[axis] != 1 else 0
        step *= shape[axis]
    return strides


@dataclass(frozen=True)
class Source:
    """A tensor read from memory (``value`` has storage), viewed with ``shape``."""

    value: Value
    shape: tuple[int, ...]

    @property
    def key(self):
        return (id(self.value), self.shape)


@dataclass
class PointwiseBody:
    """Elementwise ``nodes`` evaluated at each index of ``shape``.

    ``external``: the values with storage (kernel inputs, and outputs read back); ``outputs``: values to store
    (each of ``shape``); ``seeded``: values provided by the caller in registers (an epilogue's anchor);
    ``shape_of(v)`` and ``const_of(v)`` give static shapes and compile-time contents.
    """

    nodes: list[Node]
    external: list[Value]
    outputs: list[Value]
    shape: tuple[int, ...]
    shape_of: Callable[[Value], tuple[int, ...] | None]
    const_of: Callable[[Value], np.ndarray | None]
    seeded: list[Value] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sources: dict[tuple, Source] = {}
        self.immediates: dict[tuple, np.ndarray] = {}
        self._views: dict[int, Source] = {}  # output of a view node -> the source it reads
        self._arg_sources: dict[tuple[int, int], Source] = {}  # (node index, input index) -> source
        self.calls: list[ew.OpCall | None] = []
        computed = {id(v) for v in self.seeded}
        external = {id(v) for v in self.external}
        for k, node in enumerate(self.nodes):
            view_of = self._view_source(node, computed, external)
            if view_of is not None:
                self._views[id(node.outputs[0])] = view_of
                self.calls.append(None)
                continue
            if node.op_type not in ew.OPS or node.domain not in ("", "ai.onnx"):
                raise Unsupported(f"{node.op_type} is not elementwise")
            call = ew.op_call(node, self.const_of)
            self.calls.append(call)
            per_channel = ew.batchnorm_operands(node)
            unread = ew.UNREAD_INPUTS.get(node.op_type, ())
            for i, x in enumerate(node.inputs):
                if x is None or id(x) in computed or i in unread:
                    continue
                src = self._views.get(id(x))
                if src is None:
                    if id(x) not in external:
                        raise Unsupported(f"{x.name!r} is neither computed in the body nor read from memory")
                    xs = self._static(x)
                    if per_channel and i > 0:
                        xshape = self._static(node.inputs[0])
                        if len(xshape) < 2 or xs != (xshape[1],):
                            raise Unsupported("BatchNormalization operands that are not per-channel")
                        xs = (xs[0],) + (1,) * (len(xshape) - 2)
                    src = Source(x, xs)
                if broadcast_strides(src.shape, self.shape) is None:
                    raise Unsupported(f"{x.name!r} {src.shape} does not broadcast to {self.shape}")
                self._arg_sources[(k, i)] = src
                c = self.const_of(src.value)
                if c is not None and np.asarray(c).size == 1:
                    self.immediates[src.key] = np.asarray(c)
                else:
                    self.sources.setdefault(src.key, src)
            for o in node.outputs:
                if o is None:
                    continue
                os_ = self._static(o)
                if broadcast_strides(os_, self.shape) is None:
                    raise Unsupported(f"{o.name!r} {os_} does not broadcast to {self.shape}")
                computed.add(id(o))
        for o in self.outputs:
            if id(o) in computed:
                if self._static(o) != self.shape:
                    raise Unsupported(f"outputs of different shapes ({self._static(o)} and {self.shape})")
            elif id(o) in external or id(o) in self._views:  # an input passed straight through
                src = self._views.get(id(o)) or Source(o, self._static(o))
                if src.shape != self.shape and int(np.prod(src.shape)) != int(np.prod(self.shape)):
                    raise Unsupported("a passed-through input of another shape")
                src = Source(src.value, self.shape)
                self._views[id(o)] = src
                self.sources.setdefault(src.key, src)
            else:
                raise Unsupported(f"output {o.name!r} is not computed by the body")

    def _static(self, v: Value) -> tuple[int, ...]:
        s = self.shape_of(v)
        if s is None:
            raise Unsupported(f"{v.name!r} has no static shape")
        return tuple(int(d) for d in s)

    def _view_source(self, node: Node, computed: set, external: set) -> Source | None:
        if node.op_type not in VIEW_OPS or node.domain not in ("", "ai.onnx") or not node.inputs:
            return None
        x = node.inputs[0]
        if x is None or id(x) in computed or len([o for o in node.outputs if o is not None]) != 1:
            return None
        base = self._views.get(id(x))
        if base is None:
            if id(x) not in external:
                return None
            base = Source(x, self._static(x))
        out = node.outputs[0]
        if any(out is o for o in self.outputs):
            return None  # stored outputs are computed values (a copy), not views
        shape = self._static(out)
        if int(np.prod(shape)) != int(np.prod(base.shape)) or out.type.dtype != x.type.dtype:
            return None
        return Source(base.value, shape)

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, ln: Lanes, loaded: dict[tuple, ir.Value], seeds: dict[int, ir.Value] | None = None
                 ) -> list[ir.Value]:
        """The outputs' lane values; ``loaded[source.key]`` holds each source's lanes, ``seeds`` the seeded
        values' (by id)."""
        values: dict[int, ir.Value] = dict(seeds or {})
        for k, (node, call) in enumerate(zip(self.nodes, self.calls)):
            if call is None:
                continue
            args = []
            unread = ew.UNREAD_INPUTS.get(node.op_type, ())
            for i, x in enumerate(node.inputs):
                if x is None or i in unread:
                    args.append(None)  # an absent (or unread) optional input keeps its position
                    continue
                if id(x) in values:
                    args.append(values[id(x)])
                    continue
                src = self._arg_sources[(k, i)]
                if src.key in self.immediates:
                    args.append(ln.dconst(self.immediates[src.key].dtype, self.immediates[src.key].reshape(-1)[0]))
                else:
                    args.append(loaded[src.key])
            for o, r in zip(node.outputs, ew.emit_op(ln, call, args)):
                if o is not None and r is not None:
                    values[id(o)] = r
        out = []
        for o in self.outputs:
            if id(o) in values:
                out.append(values[id(o)])
            elif id(o) in self._views:
                out.append(loaded[self._views[id(o)].key])
            else:
                raise Unsupported(f"{o.name!r} is not computed (an op left it out)")
        return out


# -- the loop nest -------------------------------------------------------------------------------------------------

def collapse(shape: tuple[int, ...], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 axes and merge neighbours that every operand walks contiguously."""
    keep = [a for a, n in enumerate(shape) if n != 1]
    dims = [shape[a] for a in keep]
    st = [[s[a] for a in keep] for s in strides]
    if not dims:
        return [1], [[0] for _ in strides]
    out_dims, out_st = [dims[0]], [[s[0]] for s in st]
    for a in range(1, len(dims)):
        if all(o[-1] == s[a] * dims[a] for o, s in zip(out_st, st)):
            out_dims[-1] *= dims[a]
            for o, s in zip(out_st, st):
                o[-1] = s[a]
        else:
            out_dims.append(dims[a])
            for o, s in zip(out_st, st):
                o.append(s[a])
    return out_dims, out_st


def _typed_vector_ptr(b: ir.IRBuilder, p: ir.Value, width: int) -> ir.Value:
    return b.bitcast(p, ir.VectorType(p.type.pointee, width).as_pointer())


@contextlib.contextmanager
def row_pieces(kb: KernelBuilder, rows: int, inner: int, pieces: int, chunk: int):
    """This thread's share of ``rows`` rows of ``inner`` elements, each row cut into ``pieces`` pieces of
    ``chunk`` (so that few long rows still spread over the threads): the block runs once per piece with
    ``(row, j0, j1)``, the row index and the piece's element range."""
    b = kb.builder
    lo, hi = kb.thread_range(rows * pieces)
    with kb.for_range(lo, hi, name="item") as item:
        if pieces > 1:
            row = b.udiv(item, kb.i64(pieces))
            j0 = b.mul(b.urem(item, kb.i64(pieces)), kb.i64(chunk))
            j1 = kb.umin(b.add(j0, kb.i64(chunk)), kb.i64(inner))
        else:
            row, j0, j1 = item, kb.i64(0), kb.i64(inner)
        yield row, j0, j1


def emit_pointwise(kb: KernelBuilder, pb: PointwiseBody) -> None:
    """The loop nest of the module docstring, storing ``pb.outputs`` (see :class:`PointwiseBody`)."""
    shape = pb.shape
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return
    sources = list(pb.sources.values())
    src_strides = [broadcast_strides(s.shape, shape) for s in sources]
    out_strides = [contiguous_strides(shape) for _ in pb.outputs]
    dims, strides = collapse(shape, src_strides + out_strides)
    ptrs = [kb.ptr(s.value) for s in sources] + [kb.ptr(o) for o in pb.outputs]
    for o in pb.outputs:
        llvm_type(kb.dtype(o))
    width = vector_width()
    b = kb.builder
    inner = dims[-1]
    outer = dims[:-1]
    rows = int(np.prod(outer, dtype=np.int64)) if outer else 1
    pieces = 1
    if rows < 64 and inner >= 2048:
        pieces = min(-(-64 // rows), inner // 1024)
    chunk = -(-inner // pieces)
    chunk = -(-chunk // width) * width
    pieces = -(-inner // chunk)
    with row_pieces(kb, rows, inner, pieces, chunk) as (row, j0, j1):
        # the row's start in each operand
        bases = [kb.i64(0) for _ in ptrs]
        rest = row
        for axis in range(len(outer) - 1, -1, -1):
            idx = b.urem(rest, kb.i64(outer[axis])) if axis > 0 else rest
            if axis > 0:
                rest = b.udiv(rest, kb.i64(outer[axis]))
            for k, st in enumerate(strides):
                if st[axis]:
                    bases[k] = b.add(bases[k], b.mul(idx, kb.i64(st[axis])))
        row_ptrs = [b.gep(p, [base], inbounds=True) for p, base in zip(ptrs, bases)]
        n_src = len(sources)
        invariant = {}
        for k, s in enumerate(sources):
            if strides[k][-1] == 0:
                invariant[s.key] = b.load(row_ptrs[k])

        def block(lanes: int, j: ir.Value, splats: dict) -> None:
            ln = Lanes(kb.module, b, lanes)
            loaded = {}
            for k, s in enumerate(sources):
                if s.key in invariant:
                    loaded[s.key] = splats[s.key]
                else:
                    p = b.gep(row_ptrs[k], [j], inbounds=True)
                    loaded[s.key] = b.load(_typed_vector_ptr(b, p, lanes) if lanes > 1 else p, align=_itemsize(p))
            results = pb.evaluate(ln, loaded)
            for k, (o, r) in enumerate(zip(pb.outputs, results)):
                p = b.gep(row_ptrs[n_src + k], [j], inbounds=True)
                b.store(_as_storage(ln, r, kb.dtype(o)), _typed_vector_ptr(b, p, lanes) if lanes > 1 else p,
                        align=_itemsize(p))

        ln_vec = Lanes(kb.module, b, width)
        splats = {key: ln_vec.splat(v) for key, v in invariant.items()}
        n_vec = b.udiv(b.sub(j1, j0), kb.i64(width))
        j_vec_end = b.add(j0, b.mul(n_vec, kb.i64(width)))
        with kb.for_range(j0, j_vec_end, step=width, name="jv") as j:
            block(width, j, splats)
        with kb.for_range(j_vec_end, j1, name="js") as j:
            block(1, j, invariant)


def _itemsize(p: ir.Value) -> int:
    t = p.type.pointee
    if isinstance(t, ir.IntType):
        return max(1, t.width // 8)
    return 8 if isinstance(t, ir.DoubleType) else 4


def _as_storage(ln: Lanes, v: ir.Value, dtype) -> ir.Value:
    want = ln.of(dtype)
    if v.type != want:
        raise Unsupported(f"value of type {v.type} stored as {dtype}")
    return v


# -- registration -------------------------------------------------------------------------------------------------

def _shape_fn(kb: KernelBuilder, external: set[int]):
    def shape_of(v: Value):
        return kb.shape(v) if id(v) in external else kb.program.static_shape(v)
    return shape_of


@fused_emitter("pointwise")
def emit_fused_pointwise(kb: KernelBuilder, kernel: Node, body: Graph) -> None:
    outputs = list(body.outputs)
    if not outputs:
        raise Unsupported("a body without outputs")
    external = list(body.inputs)
    ext_ids = {id(v) for v in external} | {id(v) for v in outputs}
    outer_of = {id(inner): outer for inner, outer in zip(body.inputs, kernel.inputs)}

    def const_of(v: Value):
        outer = outer_of.get(id(v))
        return kb.const_value(outer) if outer is not None else kb.const_value(v)

    shape = kb.shape(outputs[0])
    pb = PointwiseBody(list(body.nodes), external, outputs, tuple(shape), _shape_fn(kb, ext_ids), const_of)
    emit_pointwise(kb, pb)


def emit_node_pointwise(kb: KernelBuilder, node: Node) -> None:
    outputs = [o for o in node.outputs if o is not None]
    inputs = [x for x in node.inputs if x is not None]
    ext = {id(v) for v in inputs + outputs}
    pb = PointwiseBody([node], inputs, outputs, tuple(kb.shape(outputs[0])), _shape_fn(kb, ext), kb.const_value)
    emit_pointwise(kb, pb)


for _op in ew.OPS:
    # Identity is a copy (injective.py); a lone BatchNormalization belongs to normalization.py
    if _op not in ("Identity", "BatchNormalization"):
        node_emitter(_op)(emit_node_pointwise)
