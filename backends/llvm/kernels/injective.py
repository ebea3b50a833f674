"""Data movement ops (each output element is one input element) as strided copies.

Every op here reduces to :func:`emit_copy`: walk an iteration shape in C order, reading the source at
``src_base + sum(i_k * src_stride_k)`` and writing the destination at ``dst_base + sum(i_k * dst_stride_k)``
(strides in elements, any sign, 0 for broadcasts). Axes are dropped when of size 1 and merged where both
sides allow, then one of three loop shapes runs:

- the innermost axis contiguous on both sides: row copies (LLVM vectorises the inner loop); long rows are
  split into pieces when there are too few rows for the threads;
- a transpose (another axis is the contiguous one of the source): cache-blocked 32 x 32 tiles, reading
  along the source's contiguous axis and writing along the destination's;
- anything else: an inner loop with a strided (or constant) read.

Outer rows / tiles are shared between threads with ``kb.thread_range``.

Ops (every numeric dtype, static shapes; operands that must be compile-time constants are said so):

- Identity, Reshape, Flatten, Squeeze, Unsqueeze: a flat copy, nothing at all when the memory plan gave the
  output the input's own bytes;
- Transpose; Slice (constant starts/ends/axes/steps, negative steps too); Expand; Tile (constant repeats);
  DepthToSpace / SpaceToDepth (both modes); Concat; Split (constant split sizes, or equal parts);
- Pad: constant mode with constant pads >= 0 (the value may be a run-time scalar); other modes and negative
  pads (crops) are declined;
- Gather: constant indices (negatives wrapped, a table built at compile time) or run-time int32/int64 indices
  (checked: one out of range ends the run with an ExecutionError); out-of-range constant indices are
  declined, so the reference kernel raises its error.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ....ir.graph import Node
from ....ops import OpContext, lookup
from ....ops.elementwise import cast_array
from ....ops.tensor import (UNKNOWN_VALUE, _pad_operands, _slice_args, _slice_operands, _split_sizes, int_list,
                            moved_operand, slice_bounds)
from ..kernel import I64, KernelBuilder, Unsupported, llvm_type, node_emitter
from .pointwise import broadcast_strides, collapse, row_pieces

TILE = 32


def _cstrides(shape) -> list[int]:
    """C-order element strides (size-1 axes keep their true stride, unlike a broadcast view)."""
    out, step = [0] * len(shape), 1
    for a in range(len(shape) - 1, -1, -1):
        out[a] = step
        step *= int(shape[a])
    return out


def _ctx(node: Node) -> OpContext:
    return OpContext(node, lookup(node.domain, node.op_type))


def _const(kb: KernelBuilder, node: Node, i: int):
    if i >= len(node.inputs) or node.inputs[i] is None:
        return None
    c = kb.const_value(node.inputs[i])
    if c is None:
        raise Unsupported(f"{node.op_type}: input {i} is not a compile-time constant")
    return np.asarray(c)


def _same_storage(kb: KernelBuilder, a, b) -> bool:
    sa, sb = kb.storage(a), kb.storage(b)
    return sa.slot == sb.slot and sa.offset == sb.offset


# -- the copy loop --------------------------------------------------------------------------------------------------

def emit_copy(kb: KernelBuilder, src: ir.Value, src_base: int, src_strides, dst: ir.Value, dst_base: int,
              dst_strides, shape) -> None:
    """dst[dst_base + i . dst_strides] = src[src_base + i . src_strides] for every index i of ``shape``."""
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return
    dims, (ss, ds) = collapse(tuple(int(d) for d in shape), [list(src_strides), list(dst_strides)])
    b = kb.builder
    src = b.gep(src, [kb.i64(src_base)]) if src_base else src
    dst = b.gep(dst, [kb.i64(dst_base)]) if dst_base else dst
    last = len(dims) - 1
    col = next((a for a in range(last) if ss[a] == 1 and dims[a] > 1), None)
    if ss[last] != 1 and ds[last] == 1 and col is not None and dims[last] > 1:
        _tiled(kb, src, ss, dst, ds, dims, col)
    else:
        _rows(kb, src, ss, dst, ds, dims)


def _offsets(kb, index_dims, idx_strides, flat):
    """Source and destination offsets of multi-index ``flat`` (C order over index_dims)."""
    b = kb.builder
    offs = [kb.i64(0) for _ in idx_strides]
    rest = flat
    for a in range(len(index_dims) - 1, -1, -1):
        if a > 0:
            idx = b.urem(rest, kb.i64(index_dims[a]))
            rest = b.udiv(rest, kb.i64(index_dims[a]))
        else:
            idx = rest
        for k, st in enumerate(idx_strides):
            if st[a]:
                offs[k] = b.add(offs[k], b.mul(idx, kb.i64(st[a])))
    return offs


def _rows(kb, src, ss, dst, ds, dims) -> None:
    b = kb.builder
    inner = dims[-1]
    outer = dims[:-1]
    rows = int(np.prod(outer, dtype=np.int64)) if outer else 1
    pieces = min(-(-64 // rows), inner // 4096) if rows < 64 and inner >= 8192 else 1
    pieces = max(pieces, 1)
    chunk = -(-inner // pieces)
    with row_pieces(kb, rows, inner, pieces, chunk) as (row, j0, j1):
        so, do = _offsets(kb, outer, [ss[:-1], ds[:-1]], row) if outer else (kb.i64(0), kb.i64(0))
        s_row = b.gep(src, [so])
        d_row = b.gep(dst, [do])
        with kb.for_range(j0, j1, name="j") as j:
            sj = j if ss[-1] == 1 else b.mul(j, kb.i64(ss[-1]))
            dj = j if ds[-1] == 1 else b.mul(j, kb.i64(ds[-1]))
            b.store(b.load(b.gep(s_row, [sj])), b.gep(d_row, [dj]))


def _tiled(kb, src, ss, dst, ds, dims, col) -> None:
    """Blocked transpose: axis ``col`` is contiguous in the source, the last axis in the destination."""
    b = kb.builder
    last = len(dims) - 1
    others = [a for a in range(last) if a != col]
    odims = [dims[a] for a in others]
    tc, tl = -(-dims[col] // TILE), -(-dims[last] // TILE)
    rows = int(np.prod(odims, dtype=np.int64)) if odims else 1
    lo, hi = kb.thread_range(rows * tc * tl)
    with kb.for_range(lo, hi, name="tile") as item:
        t_l = b.urem(item, kb.i64(tl))
        rest = b.udiv(item, kb.i64(tl))
        t_c = b.urem(rest, kb.i64(tc))
        row = b.udiv(rest, kb.i64(tc))
        if odims:
            so, do = _offsets(kb, odims, [[ss[a] for a in others], [ds[a] for a in others]], row)
        else:
            so, do = kb.i64(0), kb.i64(0)
        c0 = b.mul(t_c, kb.i64(TILE))
        c1 = kb.umin(b.add(c0, kb.i64(TILE)), kb.i64(dims[col]))
        l0 = b.mul(t_l, kb.i64(TILE))
        l1 = kb.umin(b.add(l0, kb.i64(TILE)), kb.i64(dims[last]))
        s_tile = b.gep(src, [so])
        d_tile = b.gep(dst, [do])
        with kb.for_range(c0, c1, name="c") as c:
            s_c = b.gep(s_tile, [c])  # source stride of col is 1
            d_c = b.gep(d_tile, [b.mul(c, kb.i64(ds[col]))])
            with kb.for_range(l0, l1, name="l") as i:
                v = b.load(b.gep(s_c, [b.mul(i, kb.i64(ss[last]))]))
                b.store(v, b.gep(d_c, [i]))


def _copy_all(kb: KernelBuilder, x, y) -> None:
    n = int(np.prod(kb.shape(y), dtype=np.int64))
    if int(np.prod(kb.shape(x), dtype=np.int64)) != n or kb.dtype(x) != kb.dtype(y):
        raise Unsupported("a view copy between tensors of different sizes or dtypes")
    if _same_storage(kb, x, y):
        return
    emit_copy(kb, kb.ptr(x), 0, [1], kb.ptr(y), 0, [1], (n,))


def _check_dtypes(kb, x, y) -> None:
    if kb.dtype(x) != kb.dtype(y):
        raise Unsupported("input and output dtypes differ")
    llvm_type(kb.dtype(y))


# -- ops ------------------------------------------------------------------------------------------------------------

@node_emitter("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
def emit_view_copy(kb: KernelBuilder, node: Node) -> None:
    outs = [o for o in node.outputs if o is not None]
    if len(outs) != 1:
        raise Unsupported("more than one output")
    _copy_all(kb, node.inputs[0], outs[0])


@node_emitter("Transpose")
def emit_transpose(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    shape = kb.shape(x)
    perm = _ctx(node).attrs.get("perm")
    perm = list(range(len(shape)))[::-1] if perm is None else [int(p) for p in perm]
    cs = _cstrides(shape)
    out_shape = tuple(shape[p] for p in perm)
    if out_shape != tuple(kb.shape(y)):
        raise Unsupported("Transpose output shape mismatch")
    emit_copy(kb, kb.ptr(x), 0, [cs[p] for p in perm], kb.ptr(y), 0, _cstrides(out_shape), out_shape)


@node_emitter("Slice")
def emit_slice(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    ctx = _ctx(node)
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None and kb.const_value(node.inputs[i]) is None:
            raise Unsupported("Slice with run-time starts/ends/axes/steps")
    operands = _slice_operands(ctx)
    if UNKNOWN_VALUE in operands:
        raise Unsupported("Slice with run-time operands")
    starts, ends, axes, steps = operands
    shape = kb.shape(x)
    cs = _cstrides(shape)
    base, strides, dims = 0, list(cs), list(shape)
    try:
        args = _slice_args(ctx, len(shape), starts, ends, axes, steps, ctx.shape_error)
    except Exception as exc:  # the reference raises at run time
        raise Unsupported(f"bad Slice operands: {exc}") from None
    for axis, start, end, step in args:
        s = slice_bounds(start, end, step, shape[axis])
        rng = range(*s.indices(shape[axis]))
        dims[axis] = len(rng)
        if len(rng):
            base += rng.start * cs[axis]
        strides[axis] = step * cs[axis]
    if tuple(dims) != tuple(kb.shape(y)):
        raise Unsupported(f"Slice: computed {dims}, output {kb.shape(y)}")
    emit_copy(kb, kb.ptr(x), base, strides, kb.ptr(y), 0, _cstrides(dims), dims)


@node_emitter("Expand")
def emit_expand(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    out = tuple(kb.shape(y))
    st = broadcast_strides(tuple(kb.shape(x)), out)
    if st is None:
        raise Unsupported("Expand shapes do not broadcast")
    emit_copy(kb, kb.ptr(x), 0, st, kb.ptr(y), 0, _cstrides(out), out)


@node_emitter("Tile")
def emit_tile(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    reps = [int(r) for r in _const(kb, node, 1).reshape(-1)]
    shape = kb.shape(x)
    if len(reps) != len(shape) or any(r < 0 for r in reps):
        raise Unsupported("bad Tile repeats")
    cs = _cstrides(shape)
    dims, strides = [], []
    for r, n, s in zip(reps, shape, cs):
        dims += [r, n]
        strides += [0, s]
    if tuple(r * n for r, n in zip(reps, shape)) != tuple(kb.shape(y)):
        raise Unsupported("Tile output shape mismatch")
    emit_copy(kb, kb.ptr(x), 0, strides, kb.ptr(y), 0, _cstrides(dims), dims)


def _reshaped_transpose(kb, x, y, view, perm) -> None:
    cs = _cstrides(view)
    dims = [view[p] for p in perm]
    if int(np.prod(dims)) != int(np.prod(kb.shape(y))):
        raise Unsupported("shape mismatch")
    emit_copy(kb, kb.ptr(x), 0, [cs[p] for p in perm], kb.ptr(y), 0, _cstrides(dims), dims)


@node_emitter("DepthToSpace")
def emit_depth_to_space(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    ctx = _ctx(node)
    bs = int(ctx.attr("blocksize"))
    shape = kb.shape(x)
    if len(shape) != 4 or bs <= 0 or shape[1] % (bs * bs):
        raise Unsupported("DepthToSpace shape")
    n, c, h, w = shape
    if ctx.attr("mode") == "CRD":
        _reshaped_transpose(kb, x, y, (n, c // (bs * bs), bs, bs, h, w), (0, 1, 4, 2, 5, 3))
    else:
        _reshaped_transpose(kb, x, y, (n, bs, bs, c // (bs * bs), h, w), (0, 3, 4, 1, 5, 2))


@node_emitter("SpaceToDepth")
def emit_space_to_depth(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    ctx = _ctx(node)
    bs = int(ctx.attr("blocksize"))
    shape = kb.shape(x)
    if len(shape) != 4 or bs <= 0 or shape[2] % bs or shape[3] % bs:
        raise Unsupported("SpaceToDepth shape")
    n, c, h, w = shape
    perm = (0, 1, 3, 5, 2, 4) if ctx.attr("mode") == "CRD" else (0, 3, 5, 1, 2, 4)
    _reshaped_transpose(kb, x, y, (n, c, h // bs, bs, w // bs, bs), perm)


def _axis_split(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, inner


@node_emitter("Concat")
def emit_concat(kb: KernelBuilder, node: Node) -> None:
    y = node.outputs[0]
    out = kb.shape(y)
    xs = [x for x in node.inputs if x is not None]
    rank = len(out)
    axis = int(_ctx(node).attr("axis"))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise Unsupported("Concat axis")
    outer, inner = _axis_split(out, axis)
    total = out[axis]
    offset = 0
    for x in xs:
        _check_dtypes(kb, x, y)
        s = kb.shape(x)
        if len(s) != rank or tuple(s[:axis]) + tuple(s[axis + 1:]) != tuple(out[:axis]) + tuple(out[axis + 1:]):
            raise Unsupported("Concat shapes")
        a = s[axis]
        # (outer, a * inner) rows of x land at column offset * inner of (outer, total * inner) rows of y
        emit_copy(kb, kb.ptr(x), 0, [a * inner, 1], kb.ptr(y), offset * inner, [total * inner, 1],
                  (outer, a * inner))
        offset += a
    if offset != total:
        raise Unsupported("Concat sizes")


@node_emitter("Split")
def emit_split(kb: KernelBuilder, node: Node) -> None:
    x = node.inputs[0]
    shape = kb.shape(x)
    ctx = _ctx(node)
    rank = len(shape)
    axis = int(ctx.attr("axis"))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise Unsupported("Split axis")
    split = moved_operand(ctx, "split", 13, 1)
    if split is UNKNOWN_VALUE:
        raise Unsupported("Split with run-time sizes")
    try:
        sizes = _split_sizes(ctx, shape[axis], int_list(split), ctx.shape_error)
    except Exception as exc:
        raise Unsupported(f"Split sizes: {exc}") from None
    outer, inner = _axis_split(shape, axis)
    offset = 0
    for y, a in zip(node.outputs, sizes):
        if y is not None:
            _check_dtypes(kb, x, y)
            if int(np.prod(kb.shape(y))) != outer * a * inner:
                raise Unsupported("Split output shape")
            emit_copy(kb, kb.ptr(x), offset * inner, [shape[axis] * inner, 1], kb.ptr(y), 0, [a * inner, 1],
                      (outer, a * inner))
        offset += a


@node_emitter("Pad")
def emit_pad(kb: KernelBuilder, node: Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    _check_dtypes(kb, x, y)
    ctx = _ctx(node)
    if ctx.attr("mode") != "constant":
        raise Unsupported(f"Pad mode {ctx.attr('mode')!r}")
    for i in (1, 3):
        if ctx.opset >= 11 and i < len(node.inputs) and node.inputs[i] is not None \
                and kb.const_value(node.inputs[i]) is None:
            raise Unsupported("Pad with run-time pads or axes")
    shape, out = kb.shape(x), kb.shape(y)
    try:
        pads, value = _pad_operands(ctx, len(shape))
    except Exception as exc:
        raise Unsupported(f"Pad operands: {exc}") from None
    if pads is None or any(p < 0 for pair in pads for p in pair):
        raise Unsupported("Pad with negative or unknown pads")
    if tuple(n + p + q for n, (p, q) in zip(shape, pads)) != tuple(out) or not shape:
        raise Unsupported("Pad output shape")
    dtype = kb.dtype(y)
    elem = llvm_type(dtype)
    b = kb.builder
    if value is UNKNOWN_VALUE:
        v = node.inputs[2]
        if kb.dtype(v) != dtype or int(np.prod(kb.shape(v))) != 1:
            raise Unsupported("Pad value of another dtype")
        fill = b.load(kb.ptr(v))
    else:
        raw = np.asarray(0 if value is None or np.size(value) == 0 else value).reshape(-1)[0]
        fill_np = cast_array(np.asarray(raw), dtype) if np.asarray(raw).dtype != dtype else np.asarray(raw)
        fill = ir.Constant(elem, int(fill_np.view(f"u{dtype.itemsize}")) if dtype.kind in "biu"
                           else float(fill_np))
    if int(np.prod(out, dtype=np.int64)) == 0:
        return
    rank = len(out)
    outer_dims = list(out[:-1])
    rows = int(np.prod(outer_dims, dtype=np.int64)) if outer_dims else 1
    n_last, (pb, _) = shape[-1], pads[-1]
    in_cs = _cstrides(shape)
    src, dst = kb.ptr(x), kb.ptr(y)
    lo, hi = kb.thread_range(rows)
    with kb.for_range(lo, hi, name="row") as row:
        inside = ir.Constant(ir.IntType(1), 1)
        src_off = kb.i64(0)
        rest = row
        for a in range(rank - 2, -1, -1):
            idx = b.urem(rest, kb.i64(out[a])) if a > 0 else rest
            if a > 0:
                rest = b.udiv(rest, kb.i64(out[a]))
            rel = b.sub(idx, kb.i64(pads[a][0]))
            inside = b.and_(inside, b.icmp_unsigned("<", rel, kb.i64(shape[a])))  # also false when rel < 0
            src_off = b.add(src_off, b.mul(rel, kb.i64(in_cs[a])))
        d_row = b.gep(dst, [b.mul(row, kb.i64(out[-1]))])
        copy_lo = b.select(inside, kb.i64(pb), kb.i64(out[-1]))
        copy_hi = b.select(inside, kb.i64(pb + n_last), kb.i64(out[-1]))
        with kb.for_range(0, copy_lo, name="f0") as j:
            b.store(fill, b.gep(d_row, [j]))
        s_row = b.gep(src, [b.sub(src_off, kb.i64(pb))])
        with kb.for_range(copy_lo, copy_hi, name="cp") as j:
            b.store(b.load(b.gep(s_row, [j])), b.gep(d_row, [j]))
        with kb.for_range(copy_hi, out[-1], name="f1") as j:
            b.store(fill, b.gep(d_row, [j]))


@node_emitter("Gather")
def emit_gather(kb: KernelBuilder, node: Node) -> None:
    """Rows of ``x`` along ``axis`` picked by the indices: a table built at compile time for constant indices;
    indices read at run time (embeddings) are wrapped when negative and checked: one out of range ends the run
    with an ExecutionError naming the node, like the reference (the row read is clamped so nothing strays)."""
    x, y, ind = node.inputs[0], node.outputs[0], node.inputs[1]
    _check_dtypes(kb, x, y)
    shape = kb.shape(x)
    rank = len(shape)
    axis = int(_ctx(node).attr("axis"))
    axis = axis + rank if axis < 0 else axis
    if not 0 <= axis < rank:
        raise Unsupported("Gather axis")
    n = shape[axis]
    idx = kb.const_value(ind)
    idx_shape = tuple(np.shape(idx)) if idx is not None else kb.shape(ind)
    idx_dtype = np.dtype(idx.dtype if idx is not None else kb.dtype(ind))
    if idx_dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
        raise Unsupported("Gather indices of a type other than int32/int64")
    if tuple(shape[:axis]) + tuple(idx_shape) + tuple(shape[axis + 1:]) != tuple(kb.shape(y)):
        raise Unsupported("Gather output shape")
    outer, inner = _axis_split(shape, axis)
    count = int(np.prod(idx_shape, dtype=np.int64))
    b = kb.builder
    if idx is not None:
        flat = idx.astype(np.int64).reshape(-1)
        if ((flat < -n) | (flat >= n)).any():
            raise Unsupported("Gather with out-of-range constant indices (the reference reports them)")
        if outer * count * inner == 0:
            return
        table = kb.constant_array(np.where(flat < 0, flat + n, flat).astype(np.int64))

        def index_at(k):
            return b.load(b.gep(table, [k]))
    else:
        if outer * count * inner == 0:
            return
        if n == 0:
            raise Unsupported("Gather from an empty axis")
        runtime = kb.ptr(ind)
        # check every index once (thread 0), before any row is copied
        is_first = b.icmp_unsigned("==", kb.tid, kb.i64(0))
        with b.if_then(is_first):
            with kb.for_range(0, count, name="chk") as k:
                raw = b.load(b.gep(runtime, [k]))
                i = b.sext(raw, I64) if idx_dtype == np.int32 else raw
                bad = b.or_(b.icmp_signed("<", i, kb.i64(-n)), b.icmp_signed(">=", i, kb.i64(n)))
                kb.fail_if(bad, f"Gather node {node.name!r}: an index is out of range [{-n}, {n - 1}] "
                                f"for axis {axis} of a {list(shape)} input")

        def index_at(k):
            raw = b.load(b.gep(runtime, [k]))
            i = b.sext(raw, I64) if idx_dtype == np.int32 else raw
            i = b.select(b.icmp_signed("<", i, kb.i64(0)), b.add(i, kb.i64(n)), i)
            ok = b.and_(b.icmp_signed(">=", i, kb.i64(0)), b.icmp_signed("<", i, kb.i64(n)))
            return b.select(ok, i, kb.i64(0))  # out of range: the run fails anyway; never read outside x

    src, dst = kb.ptr(x), kb.ptr(y)
    lo, hi = kb.thread_range(outer * count)
    with kb.for_range(lo, hi, name="row") as row:
        o = b.udiv(row, kb.i64(count))
        k = b.urem(row, kb.i64(count))
        i = index_at(k)
        s_row = b.gep(src, [b.mul(b.add(b.mul(o, kb.i64(n)), i), kb.i64(inner))])
        d_row = b.gep(dst, [b.mul(row, kb.i64(inner))])
        with kb.for_range(0, inner, name="j") as j:
            b.store(b.load(b.gep(s_row, [j])), b.gep(d_row, [j]))


@node_emitter("ConstantOfShape")
def emit_constant_of_shape(kb: KernelBuilder, node: Node) -> None:
    """A fill with the ``value`` attribute (a one-element tensor; float32 0 when absent). The zoo's light
    models make their weights this way when a weight is larger than constant folding's size cap."""
    y = node.outputs[0]
    value = _ctx(node).attrs.get("value")
    first = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if first.size != 1:
        raise Unsupported("ConstantOfShape value with more than one element")
    dtype = kb.dtype(y)
    if dtype.kind not in "biuf":
        raise Unsupported(f"ConstantOfShape of {dtype}")
    n = int(np.prod(kb.shape(y), dtype=np.int64))
    if n == 0:
        return
    fill = first.astype(dtype)[0]
    elem = llvm_type(dtype)
    const = ir.Constant(elem, float(fill) if dtype.kind == "f" else int(fill))
    b = kb.builder
    dst = kb.ptr(y)
    lo, hi = kb.thread_range(n, grain=64)
    with kb.for_range(lo, hi, name="fill") as i:
        b.store(const, b.gep(dst, [i]))
