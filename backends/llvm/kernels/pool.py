"""MaxPool, AveragePool (1-D and 2-D windows), GlobalAveragePool and GlobalMaxPool on float32 NCHW tensors.

Windowed pools: threads split the (image, channel) planes. With a column stride of 1 or 2 (and no column
dilation), each run of 16 output columns is accumulated in a register over the window's taps and stored once
(:mod:`.window`; padding lanes read the identity: -inf for max, 0 for a sum). Other strides accumulate each output row
in place in the output, tap by tap, over the output columns whose tap lies inside the input (the vectoriser
turns those loops into gathers: slow, but rare). Either way a max starts at -inf and an average's sum at 0,
which gives the reference's results exactly (its padded values are -inf and 0); the average's divisor table is
the reference's own (:func:`graphc.ops.pooling._window_count`), so averages match bit for bit.

Max follows numpy.maximum: a NaN in the window gives NaN. MaxPool's Indices output, LpPool and other dtypes
are declined (the reference kernel runs them).

Global pools reduce each contiguous plane with explicit ``<16 x float>`` accumulators (the loop vectoriser would
not reorder a float reduction), the last partial vector under a mask.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ....ir.graph import Node
from ....ops import OpContext, lookup
from ....ops.nn import window_geometry
from ....ops.pooling import _window_count
from ..kernel import F32, I1, I64, KernelBuilder, Unsupported, node_emitter
from .gemm_driver import c64, keep_out_of_line
from .microkernel import VEC, VT
from .window import Window, accumulate_row, for_each_tap, lane_mask, masked_load, masked_store, supports

F32_DT = np.dtype(np.float32)
NEG_INF = float("-inf")


def nan_max(b: ir.IRBuilder, acc: ir.Value, x: ir.Value) -> ir.Value:
    """numpy.maximum(acc, x): the larger, or NaN when either is NaN."""
    m = b.select(b.fcmp_ordered(">", x, acc), x, acc)
    return b.select(b.fcmp_unordered("uno", x, x), x, m)


class PoolGeometry:
    def __init__(self, kb: KernelBuilder, node: Node, ctx: OpContext):
        x_shape = kb.shape(node.inputs[0])
        kernel = tuple(ctx.attr("kernel_shape") or ())
        if len(x_shape) not in (3, 4) or len(kernel) != len(x_shape) - 2:
            raise Unsupported("only 1-D and 2-D pools")
        self.win = win = window_geometry(ctx, x_shape[2:], kernel, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
        if any(o is None or o <= 0 for o in win.out):
            raise Unsupported("empty output")
        self.planes = x_shape[0] * x_shape[1]
        two = len(kernel) == 2
        self.h, self.w = (x_shape[2], x_shape[3]) if two else (1, x_shape[2])
        self.kh, self.kw = kernel if two else (1, kernel[0])
        self.sh, self.sw = win.strides if two else (1, win.strides[0])
        self.dh, self.dw = win.dilations if two else (1, win.dilations[0])
        self.pt, self.pl = win.begin if two else (0, win.begin[0])
        self.oh, self.ow = win.out if two else (1, win.out[0])
        if self.kw > 32:
            raise Unsupported("window too wide to unroll")



def _window_pool(kb: KernelBuilder, node: Node, is_max: bool) -> None:
    ctx = OpContext(node, lookup(node.domain, node.op_type))
    x_val, y_val = node.inputs[0], node.outputs[0]
    if is_max and len(node.outputs) > 1 and node.outputs[1] is not None:
        raise Unsupported("MaxPool Indices output")
    if kb.dtype(x_val) != F32_DT or kb.dtype(y_val) != F32_DT:
        raise Unsupported("only float32 pools")
    geo = PoolGeometry(kb, node, ctx)
    keep_out_of_line(kb)
    b = kb.builder
    x_ptr, y_ptr = kb.ptr(x_val), kb.ptr(y_val)
    divisor = None
    if not is_max:
        x_shape = kb.shape(x_val)
        count = _window_count(ctx, x_shape, geo.win, bool(ctx.attr("count_include_pad")))
        count = np.asarray(count, np.float32)
        if count.ndim == 0:
            divisor = ir.Constant(F32, float(count))
        else:
            divisor = kb.constant_array(count.reshape(-1))  # (OH*OW,), the same for every plane
    init = ir.Constant(F32, NEG_INF if is_max else 0.0)
    hw, ohw = geo.h * geo.w, geo.oh * geo.ow
    if supports(geo.sw, geo.dw):
        _vector_rows(kb, geo, x_ptr, y_ptr, is_max, divisor)
        return
    lo, hi = kb.thread_range(geo.planes)
    with kb.for_range(lo, hi, name="plane") as pl:
        xp = b.gep(x_ptr, [b.mul(pl, c64(hw))], inbounds=True)
        yp = b.gep(y_ptr, [b.mul(pl, c64(ohw))], inbounds=True)
        with kb.for_range(0, geo.oh, name="oh") as oh:
            yrow = b.gep(yp, [b.mul(oh, c64(geo.ow))], inbounds=True)
            with kb.for_range(0, geo.ow, name="fill") as j:
                b.store(init, b.gep(yrow, [j], inbounds=True), align=4)

            def accumulate(kh, kw, ow, x):
                dst = b.gep(yrow, [ow], inbounds=True)
                acc = b.load(dst, align=4)
                b.store(nan_max(b, acc, x) if is_max else b.fadd(acc, x), dst, align=4)

            for_each_tap(kb, geo, xp, oh, accumulate)
            if divisor is not None:
                with kb.for_range(0, geo.ow, name="div") as j:
                    dst = b.gep(yrow, [j], inbounds=True)
                    if isinstance(divisor, ir.Constant):
                        d = divisor
                    else:
                        d = b.load(b.gep(divisor, [b.add(b.mul(oh, c64(geo.ow)), j)], inbounds=True), align=4)
                    b.store(b.fdiv(b.load(dst, align=4), d), dst, align=4)


def _vector_rows(kb: KernelBuilder, geo: PoolGeometry, x_ptr, y_ptr, is_max: bool, divisor) -> None:
    """The register-accumulating loop nest of the module docstring (column stride 1 or 2), see window.py."""
    b = kb.builder
    win = Window(geo.h, geo.w, geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.pt, geo.pl, geo.oh, geo.ow)
    hw, ohw = geo.h * geo.w, geo.oh * geo.ow
    if is_max:
        combine = lambda acc, x, kh, kw: nan_max(b, acc, x)  # noqa: E731
    else:
        combine = lambda acc, x, kh, kw: b.fadd(acc, x)  # noqa: E731
    lo, hi = kb.thread_range(geo.planes)
    with kb.for_range(lo, hi, name="plane") as pl:
        xp = b.gep(x_ptr, [b.mul(pl, c64(hw))], inbounds=True)
        yp = b.gep(y_ptr, [b.mul(pl, c64(ohw))], inbounds=True)
        with kb.for_range(0, geo.oh, name="oh") as oh:
            with kb.for_range(0, win.vectors, name="v") as v:
                ow0 = b.mul(v, c64(VEC))
                acc = accumulate_row(kb, win, xp, oh, ow0, NEG_INF if is_max else 0.0, combine)
                base = b.add(b.mul(oh, c64(geo.ow)), ow0)
                mask = lane_mask(kb, ow0, geo.ow)
                if isinstance(divisor, ir.Constant):
                    acc = b.fdiv(acc, ir.Constant(VT, [float(divisor.constant)] * VEC))
                elif divisor is not None:  # the table has OH*OW entries: lanes past OW are masked
                    acc = b.fdiv(acc, masked_load(kb, b.gep(divisor, [base], inbounds=True), mask, 1.0))
                masked_store(kb, acc, b.gep(yp, [base], inbounds=True), mask)


@node_emitter("MaxPool")
def emit_maxpool(kb: KernelBuilder, node: Node) -> None:
    _window_pool(kb, node, True)


@node_emitter("AveragePool")
def emit_avgpool(kb: KernelBuilder, node: Node) -> None:
    _window_pool(kb, node, False)


def _global_pool(kb: KernelBuilder, node: Node, is_max: bool) -> None:
    x_val, y_val = node.inputs[0], node.outputs[0]
    if kb.dtype(x_val) != F32_DT or kb.dtype(y_val) != F32_DT:
        raise Unsupported("only float32 pools")
    x_shape = kb.shape(x_val)
    if len(x_shape) < 3:
        raise Unsupported("global pool needs spatial axes")
    keep_out_of_line(kb)
    b = kb.builder
    planes, hw = x_shape[0] * x_shape[1], math.prod(x_shape[2:])
    if hw == 0:
        raise Unsupported("empty planes")
    x_ptr, y_ptr = kb.ptr(x_val), kb.ptr(y_val)
    mload = kb.intrinsic("llvm.masked.load.v16f32.p0", VT,
                         [VT.as_pointer(), ir.IntType(32), ir.VectorType(I1, VEC), VT])
    init = ir.Constant(VT, [NEG_INF if is_max else 0.0] * VEC)
    full, rem = divmod(hw, VEC)
    lo, hi = kb.thread_range(planes)
    with kb.for_range(lo, hi, name="plane") as pl:
        xp = b.gep(x_ptr, [b.mul(pl, c64(hw))], inbounds=True)
        acc_ptr = kb.scratch(VEC * 4)
        vp = b.bitcast(acc_ptr, VT.as_pointer())
        b.store(init, vp, align=64)
        with kb.for_range(0, full, name="v") as v:
            xv = b.load(b.bitcast(b.gep(xp, [b.mul(v, c64(VEC))]), VT.as_pointer()), align=4)
            acc = b.load(vp, align=64)
            b.store(nan_max(b, acc, xv) if is_max else b.fadd(acc, xv), vp, align=64)
        if rem:
            mask = ir.Constant(ir.VectorType(I1, VEC), [i < rem for i in range(VEC)])
            xv = b.call(mload, [b.bitcast(b.gep(xp, [c64(full * VEC)]), VT.as_pointer()),
                                ir.Constant(ir.IntType(32), 4), mask, init])
            acc = b.load(vp, align=64)
            b.store(nan_max(b, acc, xv) if is_max else b.fadd(acc, xv), vp, align=64)
        acc = b.load(vp, align=64)
        total = b.extract_element(acc, ir.Constant(ir.IntType(32), 0))
        for i in range(1, VEC):
            lane = b.extract_element(acc, ir.Constant(ir.IntType(32), i))
            total = nan_max(b, total, lane) if is_max else b.fadd(total, lane)
        if not is_max:
            total = b.fdiv(total, ir.Constant(F32, float(hw)))
        b.store(total, b.gep(y_ptr, [pl], inbounds=True), align=4)


@node_emitter("GlobalAveragePool")
def emit_global_avg(kb: KernelBuilder, node: Node) -> None:
    _global_pool(kb, node, False)


@node_emitter("GlobalMaxPool")
def emit_global_max(kb: KernelBuilder, node: Node) -> None:
    _global_pool(kb, node, True)


__all__ = ["nan_max", "I64"]
