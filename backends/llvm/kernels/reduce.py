"""Code generators: ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2/LogSum/LogSumExp, ArgMax/ArgMin, Hardmax.

Semantics follow graphc/ops/reduce.py and ops/indexing.py: axes from the attribute or (from opset 13 for
ReduceSum, 18 for the others) a constant second input; a non-constant axes input is declined (the reference
kernel runs it). ``noop_with_empty_axes`` with empty axes copies the input. Reductions over zero elements give
the identity (0, 1, -inf/+inf or the integer extremes, -inf for the log-sums).

dtypes: float32/float64 for every op; integers (any width and signedness) for Sum, Max, Min, Prod, SumSquare
and L1, whose integer results are exact modulo 2^bits exactly as numpy's wider accumulation cast back. Mean, L2
and the log-sums of integers are declined (the reference goes through float64 and truncates).

Loop forms and threads: see rowwise.py (row mode for an innermost reduced dim, column mode otherwise).
"""

from __future__ import annotations

import numpy as np

from ..kernel import I64, Unsupported, node_emitter
from ....ops.reduce import softmax_axes
from ....ops.registry import normalize_axes
from .rowwise import Arith, alloca, RowProgram, RowStore, Stat, emit_copy, emit_rows, layout_of, node_context


def _identity_max(dtype: np.dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _identity_min(dtype: np.dtype):
    return np.inf if dtype.kind == "f" else np.iinfo(dtype).max


def _x(ar, x, vals, pos):
    return x


def _square(ar, x, vals, pos):
    return ar.mul(x, x)


def _stats(op: str, dtype: np.dtype, count: int) -> list[Stat]:
    """The statistics that compute reduction ``op`` (the last one is the result)."""
    is_float = dtype.kind == "f"
    if op == "ReduceSum":
        return [Stat(0, "add", _x)]
    if op == "ReduceSumSquare":
        return [Stat(0, "add", _square)]
    if op == "ReduceL1":
        return [Stat(0, "add", lambda ar, x, v, p: ar.abs(x))]
    if op == "ReduceProd":
        return [Stat(1, "mul", _x)]
    if op == "ReduceMax":
        return [Stat(_identity_max(dtype), "max", _x)]
    if op == "ReduceMin":
        return [Stat(_identity_min(dtype), "min", _x)]
    if not is_float:
        raise Unsupported(f"{op} of {dtype}")
    if op == "ReduceMean":  # numpy: the sum divided by the count (0/0 = NaN for an empty reduction)
        return [Stat(0, "add", _x, lambda ar, acc, v: ar.div(acc, ar.const(count)))]
    if op == "ReduceL2":
        return [Stat(0, "add", _square, lambda ar, acc, v: ar.sqrt(acc))]
    if op == "ReduceLogSum":
        return [Stat(0, "add", _x, lambda ar, acc, v: ar.log(acc))]
    if op == "ReduceLogSumExp":
        # m = max, replaced by 0 when not finite (all -inf rows give log(0) = -inf, +inf rows give inf)
        shift = Stat(-np.inf, "max", _x, lambda ar, m, v: ar.b.select(ar.isfinite(m), m, ar.const(0)))
        total = Stat(0, "add", lambda ar, x, v, p: ar.exp(ar.sub(x, v[0])),
                     lambda ar, s, v: ar.add(ar.log(s), v[0]))
        return [shift, total]
    raise Unsupported(op)


REDUCE_OPS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")


def reduce_axes(kb, node, ctx, ndim: int):
    """The normalised, sorted axes a Reduce* node reduces; [] means no-op (noop_with_empty_axes)."""
    axes_input = None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        if ctx.opset < ctx.opdef.axes_input_since:
            raise Unsupported("axes input before its opset")
        axes_input = kb.const_value(node.inputs[1])
        if axes_input is None:
            raise Unsupported("axes computed at run time")
    try:
        axes = ctx.opdef._axes(ctx, axes_input)
    except LookupError:
        raise Unsupported("axes not constant") from None
    if axes == []:
        return []
    if axes is None:
        return list(range(ndim))

    def fail(msg):
        return Unsupported(msg)

    return sorted(set(normalize_axes(axes, ndim, fail)))


@node_emitter(*REDUCE_OPS)
def emit_reduce(kb, node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dtype = kb.dtype(x)
    if kb.dtype(y) != dtype or dtype.kind not in "fiu":
        raise Unsupported(f"{node.op_type} of {dtype}")
    ctx = node_context(node)
    shape = kb.shape(x)
    axes = reduce_axes(kb, node, ctx, len(shape))
    if axes == [] and ctx.opset >= ctx.opdef.axes_input_since:  # noop_with_empty_axes
        emit_copy(kb, kb.ptr(x), kb.ptr(y), int(np.prod(shape, dtype=np.int64)), dtype)
        return
    layout = layout_of(shape, axes)
    stats = _stats(node.op_type, dtype, layout.count)
    if int(np.prod(kb.shape(y), dtype=np.int64)) != layout.nout:
        raise Unsupported("output shape does not match the reduction")
    ar = Arith(kb, dtype)
    y_ptr = kb.ptr(y)
    prog = RowProgram(stats, [RowStore(y_ptr, dtype, lambda ar, vals, out: vals[-1])])
    emit_rows(kb, layout, kb.ptr(x), dtype, ar, prog, grain=_grain(layout))


def _grain(layout) -> int:
    """Rows per thread-range unit: short rows are grouped so a thread gets a useful amount of work."""
    return max(1, 256 // max(layout.count, 1))


# -- ArgMax / ArgMin -----------------------------------------------------------------------------------------------
@node_emitter("ArgMax", "ArgMin")
def emit_arg(kb, node) -> None:
    """Index (int64) of the first (or, with select_last_index, the last) extreme along ``axis``; NaN counts as
    the extreme for floats, as in numpy's argmax/argmin."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = kb.dtype(x)
    if dtype.kind not in "fiu" or kb.dtype(y) != np.dtype(np.int64):
        raise Unsupported(f"{node.op_type} of {dtype}")
    ctx = node_context(node)
    shape = kb.shape(x)
    ndim = max(len(shape), 1)
    axis = int(ctx.attr("axis"))
    if not -ndim <= axis < ndim or not shape:
        raise Unsupported("axis out of range or scalar input")
    axis %= ndim
    if shape[axis] == 0:
        raise Unsupported("empty axis (the reference raises)")
    n = shape[axis]
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    y_ptr = kb.ptr(y)

    def store(o, base, idx):
        kb.builder.store(idx, kb.builder.gep(y_ptr, [o], inbounds=True))

    _arg_loop(kb, kb.ptr(x), dtype, n, inner, int(np.prod(shape, dtype=np.int64)) // n,
              node.op_type == "ArgMax", bool(int(ctx.attr("select_last_index"))), store)


def _arg_loop(kb, x_ptr, dtype, n: int, inner: int, nout: int, is_max: bool, last: bool, on_index) -> None:
    """For each of ``nout`` lines of ``n`` elements (stride ``inner``), the index of the first (last) extreme,
    NaN counting as the extreme as in numpy; ``on_index(o, base, idx)`` emits what to do with it."""
    if nout == 0:
        return
    ar = Arith(kb, dtype)
    b = kb.builder

    def better(v, best):
        """Does v (later along the axis) replace best?"""
        if ar.is_float:
            if is_max:
                beats, ties = b.fcmp_ordered(">", v, best), b.fcmp_ordered(">=", v, best)
            else:
                beats, ties = b.fcmp_ordered("<", v, best), b.fcmp_ordered("<=", v, best)
            if last:  # the last NaN, else the last extreme
                return b.or_(ar.isnan(v), b.and_(b.not_(ar.isnan(best)), ties))
            return b.and_(b.not_(ar.isnan(best)), b.or_(beats, ar.isnan(v)))
        op = (">" if is_max else "<") + ("=" if last else "")
        return b.icmp_signed(op, v, best) if ar.signed else b.icmp_unsigned(op, v, best)

    best_slot, idx_slot = alloca(kb, ar.ty), alloca(kb, I64)
    lo, hi = kb.thread_range(nout, max(1, 64 // n))
    # one line at a time (stride `inner`); for inner > 1 consecutive lines read consecutive addresses
    with kb.for_range(lo, hi, name="o") as o:
        base = b.add(b.mul(b.udiv(o, kb.i64(inner)), kb.i64(n * inner)), b.urem(o, kb.i64(inner)))
        b.store(ar.load(x_ptr, base), best_slot)
        b.store(kb.i64(0), idx_slot)
        with kb.for_range(1, n, name="k") as k:
            v = ar.load(x_ptr, b.add(base, b.mul(k, kb.i64(inner))))
            best = b.load(best_slot)
            take = better(v, best)
            b.store(b.select(take, v, best), best_slot)
            b.store(b.select(take, k, b.load(idx_slot)), idx_slot)
        on_index(o, base, b.load(idx_slot))


@node_emitter("Hardmax")
def emit_hardmax(kb, node) -> None:
    """1 at the first maximum along the normalised axes (all trailing ones flattened before opset 13), 0
    elsewhere; the line is read completely before it is written, so y may share x's memory."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = kb.dtype(x)
    shape = kb.shape(x)
    if dtype.kind != "f" or kb.dtype(y) != dtype or not shape:
        raise Unsupported(f"Hardmax of {dtype} or a scalar")
    ctx = node_context(node)
    if not -len(shape) <= int(ctx.attr("axis")) < len(shape):
        raise Unsupported("axis out of range")
    axes = softmax_axes(ctx, len(shape))
    n = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    inner = int(np.prod(shape[axes[-1] + 1:], dtype=np.int64))
    if n == 0:
        return
    y_ptr = kb.ptr(y)
    ar = Arith(kb, dtype)

    def write(o, base, idx):
        b = kb.builder
        with kb.for_range(0, n, name="w") as k:
            hot = b.icmp_signed("==", k, idx)
            ar.store(b.select(hot, ar.const(1), ar.const(0)), y_ptr, b.add(base, b.mul(k, kb.i64(inner))))

    _arg_loop(kb, kb.ptr(x), dtype, n, inner, int(np.prod(shape, dtype=np.int64)) // n, True, False, write)
