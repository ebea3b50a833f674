"""Code generators: LayerNormalization, RMSNormalization, BatchNormalization (inference), InstanceNormalization,
GroupNormalization, LpNormalization, MeanVarianceNormalization — float32/float64.

The arithmetic is graphc/ops/normalization.py's, operation for operation: ``mean = sum / n``,
``centered = x - mean``, ``var = sum(centered^2) / n``, ``inv_std = 1 / sqrt(var + eps)`` (eps rounded to x's
dtype), ``y = centered * inv_std * scale + bias``; BatchNormalization ``inv = scale / sqrt(var + eps)``,
``y = x * inv + (bias - mean * inv)``. Statistics are computed in x's dtype (stash_type only widens types
narrower than float32, which are declined). Each row is read three times (mean, variance, output) while it
sits in cache; an element is read before the output is written there, so the output may share x's memory.

Declined: other dtypes, BatchNormalization in training mode or with per-activation (spatial=0) parameters,
parameters whose shape the kernel would have to broadcast in ways not handled below, empty rows.
"""

from __future__ import annotations

import numpy as np

from ..kernel import Unsupported, node_emitter
from .rowwise import (Arith, RowLayout, RowProgram, RowStore, Stat, emit_rows, float_dtype, layout_of,
                      node_context)


def mean_var_stats(count: int, eps: float | None) -> list[Stat]:
    """[mean, inv_std] of a row of ``count`` elements (the reference's _normalize)."""
    mean = Stat(0, "add", lambda ar, x, v, p: x, lambda ar, s, v: ar.div(s, ar.const(count)))

    def square(ar, x, v, p):
        d = ar.sub(x, v[-1])
        return ar.mul(d, d)

    def inv_std(ar, s, v):
        var = ar.div(s, ar.const(count))
        return ar.div(ar.const(1), ar.sqrt(ar.add(var, ar.const(eps or 0.0))))

    return [mean, Stat(0, "add", square, inv_std)]


def _param(kb, value, dtype, norm_shape: tuple) -> tuple:
    """(pointer, kind) of a Scale/B input broadcast over a normalised region of ``norm_shape``: kind "row"
    (indexed by the element's place in the row) or "one" (a single value). Declines anything else."""
    if kb.dtype(value) != dtype:
        raise Unsupported("parameter dtype differs from x's")
    shape = tuple(kb.shape(value))
    size = int(np.prod(shape, dtype=np.int64))
    if size == 1:
        return kb.ptr(value), "one"
    trimmed = shape
    while trimmed and trimmed[0] == 1 and len(trimmed) > len(norm_shape):
        trimmed = trimmed[1:]
    if len(trimmed) > len(norm_shape):
        raise Unsupported(f"parameter of shape {shape} broadcasts over the leading dims")
    if tuple(trimmed) == tuple(norm_shape[len(norm_shape) - len(trimmed):]) and len(trimmed) == len(norm_shape):
        return kb.ptr(value), "row"
    const = kb.const_value(value)
    if const is None:
        raise Unsupported(f"run-time parameter of shape {shape} needs broadcasting")
    try:
        full = np.broadcast_to(np.asarray(const, dtype).reshape(trimmed), norm_shape)
    except ValueError:
        raise Unsupported(f"parameter of shape {shape} does not broadcast to {norm_shape}") from None
    return kb.constant_array(np.ascontiguousarray(full)), "row"


def _load_param(ar, param, index):
    ptr, kind = param
    return ar.load(ptr, index if kind == "row" else ar.kb.i64(0))


def _optional(node, i):
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] is not None else None


def _output(node, i):
    return node.outputs[i] if len(node.outputs) > i and node.outputs[i] is not None else None


def _trailing_rows(kb, node):
    """(x, y, dtype, ctx, axis, layout) of a LayerNormalization/RMSNormalization node, normalising over the
    axes from ``axis`` on: one row per leading index (declined: scalars, a dtype change, empty rows)."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    if not shape or kb.dtype(y) != dtype:
        raise Unsupported("scalar input or dtype change")
    ctx = node_context(node)
    axis = int(ctx.attr("axis"))
    if not -len(shape) <= axis < len(shape):
        raise Unsupported("axis out of range")
    axis %= len(shape)
    layout = layout_of(shape, range(axis, len(shape)))
    if layout.count == 0 or layout.column and layout.count != 1:
        raise Unsupported("empty rows")
    return x, y, dtype, ctx, axis, layout


@node_emitter("LayerNormalization")
def emit_layer_norm(kb, node) -> None:
    x, y, dtype, ctx, axis, layout = _trailing_rows(kb, node)
    norm_shape = tuple(kb.shape(x)[axis:])
    ar = Arith(kb, dtype)
    scale = _param(kb, node.inputs[1], dtype, norm_shape)
    bias_v = _optional(node, 2)
    bias = _param(kb, bias_v, dtype, norm_shape) if bias_v is not None else None
    y_ptr = kb.ptr(y)
    stores = []
    for k in (1, 2):
        out = _output(node, k)
        if out is not None:
            if kb.dtype(out) != dtype:
                raise Unsupported("statistics dtype differs from x's")
            stores.append(RowStore(kb.ptr(out), dtype, lambda ar, v, out, k=k: v[k - 1]))

    def write(ar, x, v, pos):
        normed = ar.mul(ar.sub(x, v[0]), v[1])
        out = ar.mul(normed, _load_param(ar, scale, pos.l))
        if bias is not None:
            out = ar.add(out, _load_param(ar, bias, pos.l))
        ar.store(out, y_ptr, pos.flat)

    prog = RowProgram(mean_var_stats(layout.count, float(ctx.attr("epsilon"))), stores, write)
    emit_rows(kb, layout, kb.ptr(x), dtype, ar, prog, grain=max(1, 1024 // layout.count))


def _channel_layout(shape, channels: int, spatial: int) -> RowLayout:
    """Rows (n, c) of ``spatial`` contiguous elements: row p is channel p % channels."""
    rows = shape[0] * channels
    return RowLayout(rows, ((rows, spatial),), (), spatial, 1, False)


def _channel_params(kb, node, idxs, dtype, c: int) -> list:
    ptrs = []
    for i in idxs:
        v = node.inputs[i]
        if kb.dtype(v) != dtype or tuple(kb.shape(v)) != (c,):
            raise Unsupported("per-channel parameters must be 1-D of x's dtype")
        ptrs.append(kb.ptr(v))
    return ptrs


@node_emitter("BatchNormalization")
def emit_batch_norm(kb, node) -> None:
    """Inference mode: y = x * inv[c] + (B[c] - mean[c] * inv[c]), inv = scale / sqrt(var + eps), per row."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    ctx = node_context(node)
    if len(shape) < 2 or any(o is not None for o in node.outputs[1:]) or ctx.opdef._training(ctx):
        raise Unsupported("training mode or rank < 2")
    c = shape[1]
    spatial = int(np.prod(shape[2:], dtype=np.int64))
    s, bi, m, var = _channel_params(kb, node, (1, 2, 3, 4), dtype, c)
    eps = float(ctx.attr("epsilon"))
    y_ptr = kb.ptr(y)

    def pre(ar, p):
        ch = ar.b.urem(p, kb.i64(c))
        inv = ar.div(ar.load(s, ch), ar.sqrt(ar.add(ar.load(var, ch), ar.const(eps))))
        return [inv, ar.sub(ar.load(bi, ch), ar.mul(ar.load(m, ch), inv))]

    def write(ar, x, v, pos):
        ar.store(ar.add(ar.mul(x, v[0]), v[1]), y_ptr, pos.flat)

    layout = _channel_layout(shape, c, spatial)
    if layout.nout == 0 or spatial == 0:
        return
    emit_rows(kb, layout, kb.ptr(x), dtype, Arith(kb, dtype), RowProgram([], [], write, pre),
              grain=max(1, 4096 // spatial))


def _normalize_rows(kb, node, layout, eps, channel_of, scale, bias) -> None:
    """Mean/variance rows, then y = centered * inv_std * scale[ch] + bias[ch] (ch = channel_of(ar, pos))."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = kb.dtype(x)
    y_ptr = kb.ptr(y)

    def write(ar, x, v, pos):
        ch = channel_of(ar, pos)
        normed = ar.mul(ar.sub(x, v[0]), v[1])
        ar.store(ar.add(ar.mul(normed, ar.load(scale, ch)), ar.load(bias, ch)), y_ptr, pos.flat)

    prog = RowProgram(mean_var_stats(layout.count, eps), [], write)
    emit_rows(kb, layout, kb.ptr(x), dtype, Arith(kb, dtype), prog, grain=max(1, 1024 // max(layout.count, 1)))


@node_emitter("InstanceNormalization")
def emit_instance_norm(kb, node) -> None:
    x = node.inputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    if len(shape) < 3:
        raise Unsupported("rank < 3")
    c = shape[1]
    spatial = int(np.prod(shape[2:], dtype=np.int64))
    if spatial == 0 or shape[0] * c == 0:
        raise Unsupported("empty")
    scale, bias = _channel_params(kb, node, (1, 2), dtype, c)
    layout = _channel_layout(shape, c, spatial)
    ctx = node_context(node)
    _normalize_rows(kb, node, layout, float(ctx.attr("epsilon")),
                    lambda ar, pos: ar.b.urem(pos.p, kb.i64(c)), scale, bias)


@node_emitter("GroupNormalization")
def emit_group_norm(kb, node) -> None:
    x = node.inputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    ctx = node_context(node)
    groups = int(ctx.attr("num_groups"))
    if len(shape) < 2 or groups <= 0 or shape[1] % groups:
        raise Unsupported("rank < 2 or channels not divisible by num_groups")
    n, c = shape[:2]
    cpg = c // groups
    spatial = int(np.prod(shape[2:], dtype=np.int64))
    if n * c * spatial == 0:
        raise Unsupported("empty")
    per_channel = ctx.opset >= 21
    scale, bias = _channel_params(kb, node, (1, 2), dtype, c if per_channel else groups)
    layout = RowLayout(n * groups, ((n * groups, cpg * spatial),), ((cpg, spatial),) if cpg > 1 else (),
                       spatial, 1, False)

    def channel_of(ar, pos):
        g = ar.b.urem(pos.p, kb.i64(groups))
        return ar.b.add(ar.b.mul(g, kb.i64(cpg)), pos.j) if per_channel else g

    _normalize_rows(kb, node, layout, float(ctx.attr("epsilon")), channel_of, scale, bias)


@node_emitter("LpNormalization")
def emit_lp_norm(kb, node) -> None:
    """x / ||x||_p along axis for p in {1, 2}; 0 where the norm is 0."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    ctx = node_context(node)
    p, axis = int(ctx.attr("p")), int(ctx.attr("axis"))
    if p not in (1, 2) or not shape or not -len(shape) <= axis < len(shape):
        raise Unsupported(f"p={p} or axis out of range")
    layout = layout_of(shape, [axis % len(shape)])
    if p == 2:
        norm = Stat(0, "add", lambda ar, x, v, q: ar.mul(x, x), lambda ar, s, v: ar.sqrt(s))
    else:
        norm = Stat(0, "add", lambda ar, x, v, q: ar.abs(x))
    y_ptr = kb.ptr(y)

    def write(ar, x, v, pos):
        zero = ar.b.fcmp_ordered("==", v[0], ar.const(0))
        ar.store(ar.b.select(zero, ar.const(0), ar.div(x, v[0])), y_ptr, pos.flat)

    emit_rows(kb, layout, kb.ptr(x), dtype, Arith(kb, dtype), RowProgram([norm], [], write),
              grain=max(1, 1024 // max(layout.count, 1)))


@node_emitter("MeanVarianceNormalization")
def emit_mvn(kb, node) -> None:
    """(x - mean) / sqrt(var) over ``axes`` (the reference's _normalize with epsilon 0)."""
    x, y = node.inputs[0], node.outputs[0]
    dtype = float_dtype(kb.dtype(x))
    shape = kb.shape(x)
    ctx = node_context(node)
    rank = len(shape)
    axes = [int(a) for a in ctx.attr("axes")]
    if not rank or any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise Unsupported("axes out of range")
    layout = layout_of(shape, sorted(a % rank for a in axes))
    if layout.count == 0:
        raise Unsupported("empty rows")
    y_ptr = kb.ptr(y)

    def write(ar, x, v, pos):
        ar.store(ar.mul(ar.sub(x, v[0]), v[1]), y_ptr, pos.flat)

    emit_rows(kb, layout, kb.ptr(x), dtype, Arith(kb, dtype), RowProgram(mean_var_stats(layout.count, 0.0), [], write),
              grain=max(1, 1024 // layout.count))


@node_emitter("RMSNormalization")
def emit_rms_norm(kb, node) -> None:
    """y = x / sqrt(sum(x^2) / n + eps) * scale over the axes from ``axis`` on (the reference's order)."""
    x, y, dtype, ctx, axis, layout = _trailing_rows(kb, node)
    scale = _param(kb, node.inputs[1], dtype, tuple(kb.shape(x)[axis:]))
    count, eps = layout.count, float(ctx.attr("epsilon"))
    rms = Stat(0, "add", lambda ar, x, v, p: ar.mul(x, x),
               lambda ar, s, v: ar.sqrt(ar.add(ar.div(s, ar.const(count)), ar.const(eps))))
    y_ptr = kb.ptr(y)

    def write(ar, x, v, pos):
        ar.store(ar.mul(ar.div(x, v[0]), _load_param(ar, scale, pos.l)), y_ptr, pos.flat)

    emit_rows(kb, layout, kb.ptr(x), dtype, Arith(kb, dtype), RowProgram([rms], [], write),
              grain=max(1, 1024 // layout.count))


@node_emitter("LRN")
def emit_lrn(kb, node) -> None:
    """Local response normalisation across channels (float32, rank >= 3, NC...): per (n, c) plane, the window's
    squares are summed into per-thread scratch along the contiguous spatial run (vectorised), then
    ``y = x / exp(beta * log(bias + alpha / size * sum))`` -- pow through the float32 exp/log polynomials, so
    the loop stays vectorised. The sum is direct (the reference subtracts cumulative sums); both are float32
    and agree to rounding."""
    from llvmlite import ir

    from ....ops import OpContext, lookup
    from ..kernel import F32
    from .mathfns import Lanes, exp_f32, log_f32

    x, y = node.inputs[0], node.outputs[0]
    if kb.dtype(x) != np.float32 or kb.dtype(y) != np.float32:
        raise Unsupported("LRN: float32 only")
    shape = kb.shape(x)
    if len(shape) < 3:
        raise Unsupported("LRN: rank < 3")
    ctx = OpContext(node, lookup(node.domain, node.op_type))
    size = int(ctx.attr("size"))
    alpha, beta, bias = (float(ctx.attr(k)) for k in ("alpha", "beta", "bias"))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    n, c = shape[0], shape[1]
    inner = int(np.prod(shape[2:], dtype=np.int64))
    if n * c * inner == 0:
        return
    b = kb.builder
    src, dst = kb.ptr(x), kb.ptr(y)
    acc = kb.scratch(inner * 4)
    ln = Lanes(kb.module, b, 1)
    zero, scale = ir.Constant(F32, 0.0), ir.Constant(F32, float(np.float32(alpha / size)))
    lo, hi = kb.thread_range(n * c)
    with kb.for_range(lo, hi, name="plane") as plane:
        ch = b.urem(plane, kb.i64(c))
        first = b.sub(plane, ch)  # plane index of channel 0 of this image
        with kb.for_range(0, inner, name="z") as i:
            b.store(zero, b.gep(acc, [i]))
        c_lo = b.sub(ch, kb.i64(before))
        c_lo = b.select(b.icmp_signed("<", c_lo, kb.i64(0)), kb.i64(0), c_lo)
        c_hi = b.add(ch, kb.i64(after + 1))
        c_hi = b.select(b.icmp_signed(">", c_hi, kb.i64(c)), kb.i64(c), c_hi)
        with kb.for_range(c_lo, c_hi, name="win") as cw:
            row = b.gep(src, [b.mul(b.add(first, cw), kb.i64(inner))])
            with kb.for_range(0, inner, name="sq") as i:
                v = b.load(b.gep(row, [i]))
                p = b.gep(acc, [i])
                b.store(b.fadd(b.load(p), b.fmul(v, v)), p)
        base = b.mul(plane, kb.i64(inner))
        with kb.for_range(0, inner, name="out") as i:
            s = b.load(b.gep(acc, [i]))
            d = b.fadd(ir.Constant(F32, float(np.float32(bias))), b.fmul(scale, s))
            denom = exp_f32(ln, b.fmul(ir.Constant(F32, float(np.float32(beta))), log_f32(ln, d)))
            at = b.add(base, i)
            b.store(b.fdiv(b.load(b.gep(src, [at])), denom), b.gep(dst, [at]))
