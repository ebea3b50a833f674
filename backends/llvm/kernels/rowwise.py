"""Row-wise loop nests shared by the reduction, softmax and normalization code generators.

A reduction of a dense C-contiguous tensor over a set of axes is brought to one canonical form
(:func:`layout_of`): adjacent dims that are both reduced or both kept merge, dims of size 1 vanish, and then

- **row mode** (the innermost dim is reduced): output ``p`` reduces ``x[base(p) + roff(j) + l]`` over
  ``j < J`` (the other reduced dims) and ``l < L`` (the contiguous innermost run);
- **column mode** (the innermost dim is kept): output ``p * I + i`` reduces ``x[base(p) + roff(j) + i]``
  over ``j < J``; loops run over ``i`` innermost, so the work is vectorised across the contiguous dim.

:func:`emit_rows` builds the loop nest for a list of :class:`Stat` (statistics computed one after the other,
each pass may use the finished earlier ones: softmax's max then sum, layer norm's mean then variance), stores
per-row results, and optionally runs a last per-element pass (the normalised output). Rows are split between
threads (``kb.thread_range``); every output is computed by one thread in one fixed order, so results do not
depend on the number of threads. Float accumulations carry LLVM's ``reassoc`` flag so that the loop
vectoriser keeps several vector accumulators (the order is fixed at compile time, not by the data); in
column mode each output element has its own accumulator, in per-thread scratch.

Element functions are Python callbacks that emit scalar IR at ``kb.builder`` (the vectorisers widen them);
they receive an :class:`Arith` for the compute dtype and a :class:`Pos` telling where the element is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from llvmlite import ir

from .. import kernel as K
from ..kernel import Unsupported, llvm_type
from . import mathfns
from .mathfns import Lanes

COLUMN_CHUNK = 512  # inner elements per column-mode work item (its accumulators stay in L1)


# -- layout -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowLayout:
    outer: int  # P: number of independent (outer) rows
    outer_dims: tuple  # ((size, stride), ...) of the kept dims making p (C order), inner excluded
    red_dims: tuple  # ((size, stride), ...) of the reduced dims making j, the contiguous row excluded
    row: int  # L: contiguous reduced run (row mode), 1 in column mode
    inner: int  # I: contiguous kept run (column mode), 1 in row mode
    column: bool

    @property
    def J(self) -> int:
        return math.prod(s for s, _ in self.red_dims)

    @property
    def count(self) -> int:
        """Elements reduced into each output."""
        return self.J * self.row

    @property
    def nout(self) -> int:
        return self.outer * self.inner


def layout_of(shape, axes) -> RowLayout:
    """The canonical loop form of reducing a C-contiguous tensor of ``shape`` over ``axes`` (normalised)."""
    shape = tuple(int(d) for d in shape)
    axes = {int(a) for a in axes}
    if any(d == 0 for d in shape):
        nout = math.prod(d for i, d in enumerate(shape) if i not in axes)
        return RowLayout(nout, ((nout, 0),) if nout > 1 else (), (), 0, 1, False)
    groups: list[list] = []  # [size, reduced, stride]
    stride = 1
    for i in reversed(range(len(shape))):
        n, red = shape[i], i in axes
        if n != 1:
            if groups and groups[-1][1] == red:
                groups[-1][0] *= n
            else:
                groups.append([n, red, stride])
        stride *= n
    groups.reverse()  # outermost first
    if not groups:
        return RowLayout(1, (), (), 1, 1, False)
    last = groups[-1]
    column = not last[1]
    rest = groups[:-1]
    outer_dims = tuple((n, s) for n, r, s in rest if not r)
    red_dims = tuple((n, s) for n, r, s in rest if r)
    outer = math.prod(n for n, _ in outer_dims)
    if column:
        return RowLayout(outer, outer_dims, red_dims, 1, last[0], True)
    return RowLayout(outer, outer_dims, red_dims, last[0], 1, False)


# -- scalar arithmetic in one dtype ------------------------------------------------------------------------------
class Arith:
    """Scalar operations of numpy dtype ``dtype`` (float32/64 or an integer type) at ``kb.builder``."""

    def __init__(self, kb, dtype):
        self.kb = kb
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "fiu":
            raise Unsupported(f"dtype {self.dtype}")
        self.ty = llvm_type(self.dtype)
        self.is_float = self.dtype.kind == "f"
        self.signed = self.dtype.kind == "i"

    @property
    def b(self) -> ir.IRBuilder:
        return self.kb.builder

    @property
    def lanes(self) -> Lanes:
        return Lanes(self.kb.module, self.kb.builder, 1)

    def const(self, v) -> ir.Constant:
        if self.is_float:
            return ir.Constant(self.ty, float(np.asarray(v, np.float64).astype(self.dtype)))
        return ir.Constant(self.ty, int(v) & ((1 << self.ty.width) - 1))

    def _call(self, name: str, *args):
        suffix = mathfns.type_suffix(self.ty)
        fn = self.kb.intrinsic(f"llvm.{name}.{suffix}", self.ty, [self.ty] * len(args))
        return self.b.call(fn, list(args))

    # the reduction combiners (float ones re-associable: the vectoriser may keep several accumulators)
    def add(self, a, b_, reassoc: bool = False):
        if self.is_float:
            return self.b.fadd(a, b_, flags=("reassoc",) if reassoc else ())
        return self.b.add(a, b_)

    def mul(self, a, b_, reassoc: bool = False):
        if self.is_float:
            return self.b.fmul(a, b_, flags=("reassoc",) if reassoc else ())
        return self.b.mul(a, b_)

    def sub(self, a, b_):
        return self.b.fsub(a, b_) if self.is_float else self.b.sub(a, b_)

    def div(self, a, b_):
        if self.is_float:
            return self.b.fdiv(a, b_)
        raise Unsupported("integer division in a row kernel")

    def max(self, a, b_):
        """numpy's maximum (NaN wins) for floats; signed/unsigned max for integers."""
        if self.is_float:
            return self._call("maximum", a, b_)
        return self._call("smax" if self.signed else "umax", a, b_)

    def min(self, a, b_):
        if self.is_float:
            return self._call("minimum", a, b_)
        return self._call("smin" if self.signed else "umin", a, b_)

    def abs(self, a):
        if self.is_float:
            return self._call("fabs", a)
        if not self.signed:
            return a
        fn = self.kb.intrinsic(f"llvm.abs.{mathfns.type_suffix(self.ty)}", self.ty, [self.ty, K.I1])
        return self.b.call(fn, [a, ir.Constant(K.I1, 0)])  # abs(INT_MIN) wraps, as numpy's

    def sqrt(self, a):
        return self._call("sqrt", a)

    def exp(self, a):
        return mathfns.exp(self.lanes, a)

    def log(self, a):
        return mathfns.log(self.lanes, a)

    def isfinite(self, a):
        return self.b.fcmp_ordered("!=", self._call("fabs", a), ir.Constant(self.ty, float("inf")))

    def isnan(self, a):
        return self.b.fcmp_unordered("!=", a, a)

    def load(self, ptr, index, dtype=None):
        """Load ``ptr[index]`` (of numpy ``dtype``, default this one) converted to this dtype."""
        v = self.b.load(self.b.gep(ptr, [index], inbounds=True))
        return self.convert(v, np.dtype(dtype) if dtype is not None else self.dtype, self.dtype)

    def store(self, value, ptr, index, dtype=None):
        dtype = np.dtype(dtype) if dtype is not None else self.dtype
        self.b.store(self.convert(value, self.dtype, dtype), self.b.gep(ptr, [index], inbounds=True))

    def convert(self, v, src: np.dtype, dst: np.dtype):
        if src == dst:
            return v
        if src.kind == "f" and dst.kind == "f":
            t = llvm_type(dst)
            return self.b.fpext(v, t) if dst.itemsize > src.itemsize else self.b.fptrunc(v, t)
        raise Unsupported(f"conversion {src} -> {dst} in a row kernel")


# -- the loop nest -----------------------------------------------------------------------------------------------
@dataclass
class Pos:
    """Where an element is: ``flat`` its offset in x (and in same-shaped outputs), ``p`` its outer row, ``j``
    its reduced-dims combination, ``l`` its place in the contiguous row (row mode), ``i`` its place in the
    contiguous inner run (column mode; the output offset is ``out``)."""

    flat: ir.Value
    p: ir.Value
    j: ir.Value
    l: ir.Value
    i: ir.Value
    out: ir.Value


@dataclass
class Stat:
    """One per-row statistic: ``final(combine over the row of elem(x))`` with identity ``init``.

    ``elem(ar, x, vals, pos)`` sees the finished earlier statistics ``vals``; ``combine`` is one of add, mul,
    max, min; ``final(ar, acc, vals)`` (default identity) gives the statistic from the accumulator."""

    init: float
    combine: str
    elem: Callable
    final: Callable | None = None


@dataclass
class RowStore:
    """A per-row output: ``ptr[out] = value(ar, vals, out)`` converted from the stats' dtype to ``dtype``
    (``dtype`` None: the value is stored as it is)."""

    ptr: ir.Value
    dtype: np.dtype | None
    value: Callable


@dataclass
class RowProgram:
    stats: list[Stat]
    stores: list[RowStore] = field(default_factory=list)
    write: Callable | None = None  # write(ar, x, vals, pos): the last per-element pass (stores itself)
    pre: Callable | None = None  # pre(ar, p) -> values computed once per outer row, first in vals


def alloca(kb, ty) -> ir.Value:
    b = ir.IRBuilder(kb.function.entry_basic_block)
    b.position_at_start(kb.function.entry_basic_block)
    return b.alloca(ty)


def _offset(kb, idx, dims) -> ir.Value:
    """sum of (digit k of idx in the mixed radix of dims) * stride_k; dims = ((size, stride), ...) C order."""
    b = kb.builder
    if not dims:
        return kb.i64(0)
    if len(dims) == 1:
        return b.mul(idx, kb.i64(dims[0][1]))
    off = kb.i64(0)
    rest = idx
    for n, s in reversed(dims):
        digit = b.urem(rest, kb.i64(n))
        rest = b.udiv(rest, kb.i64(n))
        off = b.add(off, b.mul(digit, kb.i64(s)))
    return off


class _ReducedOffsets:
    """roff(j): a multiply for one reduced group, a compile-time table for several."""

    def __init__(self, kb, dims):
        self.kb = kb
        self.dims = dims
        self.table = None
        if len(dims) > 1:
            sizes = [n for n, _ in dims]
            strides = np.array([s for _, s in dims], np.int64)
            idx = np.indices(sizes).reshape(len(dims), -1)
            self.table = kb.constant_array((idx * strides[:, None]).sum(axis=0).astype(np.int64))

    def __call__(self, j):
        if self.table is not None:
            b = self.kb.builder
            return b.load(b.gep(self.table, [j], inbounds=True))
        return _offset(self.kb, j, self.dims)


def _combine(ar: Arith, how: str, acc, v):
    if how == "add":
        return ar.add(acc, v, reassoc=True)
    if how == "mul":
        return ar.mul(acc, v, reassoc=True)
    if how == "max":
        return ar.max(acc, v)
    if how == "min":
        return ar.min(acc, v)
    raise ValueError(how)


def _store_row(ar, st: RowStore, value, index) -> None:
    if st.dtype is None:
        ar.b.store(value, ar.b.gep(st.ptr, [index], inbounds=True))
    else:
        ar.store(value, st.ptr, index, st.dtype)


def _load_x(ar, x_ptr, flat, x_dtype):
    return None if x_ptr is None else ar.load(x_ptr, flat, x_dtype)


def emit_rows(kb, layout: RowLayout, x_ptr, x_dtype, ar: Arith, prog: RowProgram, grain: int = 1) -> None:
    """Emit the loop nest of ``prog`` over ``layout`` (see the module docstring); the element callbacks get
    ``x_ptr[flat]`` as ``x`` (None when ``x_ptr`` is None: they load what they need themselves)."""
    if layout.nout == 0:
        return
    if layout.column:
        _emit_columns(kb, layout, x_ptr, x_dtype, ar, prog)
    else:
        _emit_row_mode(kb, layout, x_ptr, x_dtype, ar, prog, grain)


def _emit_row_mode(kb, layout, x_ptr, x_dtype, ar, prog, grain):
    b = kb.builder
    roff = _ReducedOffsets(kb, layout.red_dims)
    slots = [alloca(kb, ar.ty) for _ in prog.stats]
    lo, hi = kb.thread_range(layout.outer, grain)
    zero = kb.i64(0)
    with kb.for_range(lo, hi, name="p") as p:
        base = _offset(kb, p, layout.outer_dims)
        vals: list = list(prog.pre(ar, p)) if prog.pre else []

        def sweep(body):
            with kb.for_range(0, layout.J, name="j") as j:
                rb = b.add(base, roff(j))
                with kb.for_range(0, layout.row, name="l") as l:
                    flat = b.add(rb, l)
                    body(_load_x(ar, x_ptr, flat, x_dtype), Pos(flat, p, j, l, zero, p))

        for stat, slot in zip(prog.stats, slots):
            b.store(ar.const(stat.init), slot)
            done = list(vals)

            def accumulate(x, pos, stat=stat, slot=slot, done=done):
                v = stat.elem(ar, x, done, pos)
                b.store(_combine(ar, stat.combine, b.load(slot), v), slot)

            sweep(accumulate)
            acc = b.load(slot)
            vals.append(stat.final(ar, acc, done) if stat.final else acc)
        for st in prog.stores:
            _store_row(ar, st, st.value(ar, vals, p), p)
        if prog.write is not None:
            sweep(lambda x, pos: prog.write(ar, x, vals, pos))


def _emit_columns(kb, layout, x_ptr, x_dtype, ar, prog):
    b = kb.builder
    roff = _ReducedOffsets(kb, layout.red_dims)
    I = layout.inner
    C = min(I, COLUMN_CHUNK)
    nch = -(-I // C)
    accs = [kb.scratch(C * ar.dtype.itemsize, ar.ty) for _ in prog.stats]
    lo, hi = kb.thread_range(layout.outer * nch)
    zero = kb.i64(0)
    with kb.for_range(lo, hi, name="item") as item:
        p = b.udiv(item, kb.i64(nch))
        i0 = b.mul(b.urem(item, kb.i64(nch)), kb.i64(C))
        n_i = kb.umin(kb.i64(C), b.sub(kb.i64(I), i0))
        base = b.add(_offset(kb, p, layout.outer_dims), i0)
        obase = b.add(b.mul(p, kb.i64(I)), i0)

        pre = list(prog.pre(ar, p)) if prog.pre else []

        def stat_vals(k, i):
            return pre + [ar.load(accs[m], i) for m in range(k)]

        def over_i(body):
            with kb.for_range(0, n_i, name="i") as i:
                body(i)

        def sweep(body):
            with kb.for_range(0, layout.J, name="j") as j:
                rb = b.add(base, roff(j))
                with kb.for_range(0, n_i, name="i") as i:
                    flat = b.add(rb, i)
                    body(_load_x(ar, x_ptr, flat, x_dtype), i, Pos(flat, p, j, zero, b.add(i0, i), b.add(obase, i)))

        for k, stat in enumerate(prog.stats):
            acc = accs[k]
            over_i(lambda i, acc=acc, stat=stat: ar.store(ar.const(stat.init), acc, i))

            def accumulate(x, i, pos, k=k, stat=stat, acc=acc):
                v = stat.elem(ar, x, stat_vals(k, i), pos)
                ar.store(_combine(ar, stat.combine, ar.load(acc, i), v), acc, i)

            sweep(accumulate)
            if stat.final is not None:
                over_i(lambda i, k=k, stat=stat, acc=acc:
                       ar.store(stat.final(ar, ar.load(acc, i), stat_vals(k, i)), acc, i))
        nstats = len(prog.stats)
        for st in prog.stores:
            def store(i, st=st):
                out = b.add(obase, i)
                _store_row(ar, st, st.value(ar, stat_vals(nstats, i), out), out)

            over_i(store)
        if prog.write is not None:
            sweep(lambda x, i, pos: prog.write(ar, x, stat_vals(nstats, i), pos))


def emit_copy(kb, src_ptr, dst_ptr, n: int, dtype) -> None:
    """dst[0:n] = src[0:n], split between threads (a no-op reduction)."""
    b = kb.builder
    lo, hi = kb.thread_range(n, 1024)
    with kb.for_range(lo, hi) as i:
        b.store(b.load(b.gep(src_ptr, [i], inbounds=True)), b.gep(dst_ptr, [i], inbounds=True))


def node_context(node):
    """The registry's OpContext of ``node`` (attributes with defaults, opset, constants)."""
    from ....ops import OpContext, lookup

    opdef = lookup(node.domain, node.op_type)
    if opdef is None:
        raise Unsupported(f"no op definition for {node.op_type}")
    return OpContext(node, opdef)


def float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise Unsupported(f"dtype {dtype} (float32/float64 only)")
    return dtype


__all__ = ["RowLayout", "layout_of", "Arith", "Pos", "Stat", "RowStore", "RowProgram", "emit_rows", "emit_copy",
           "alloca", "node_context", "float_dtype"]
