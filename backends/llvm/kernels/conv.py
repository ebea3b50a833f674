"""Conv (NCHW, float32, 1-D and 2-D, constant weights), alone or with its fused elementwise tail.

Implicit GEMM per (image, group): ``Y[co, oh*OW+ow] = W[co, ci*KH*KW] x im2col(X)[ci*KH*KW, oh*OW+ow]``.

- W is packed into microkernel panels at compile time (weights are constants; a runtime W is declined);
- the im2col matrix is never built whole: the GEMM driver asks for one K x NC column block at a time and
  :class:`Im2colB` gathers it into per-thread scratch (one contiguous, vectorisable copy per (tap, output row),
  zeros where the window lies in the padding); 1x1 stride-1 unpadded convs read X in place (:class:`DirectB`);
- depthwise convs (one input channel per group) run a direct kernel instead (a GEMM with M = 1 would waste
  the microkernel): per output row, a row accumulator is updated tap by tap, vectorised along the width;
- the bias, and then the body's tail (:mod:`.tails`), are applied to each finished run of outputs.

3-D convs, non-float32 tensors and runtime weights are declined (the reference kernel runs them).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from ....ir.graph import Graph, Node
from ....ops import OpContext, lookup
from ....ops.nn import window_geometry
from ..kernel import F32, I64, KernelBuilder, Unsupported, builder_loop, fused_emitter, node_emitter
from .gemm_driver import (ConstA, DirectB, c64, emit_gemm, for_bits, keep_out_of_line, pair_rows, plan_gemm,
                          runs_in_bf16, threads_of)
from .microkernel import VEC, VT, splat
from .window import Window, accumulate_row, for_each_tap, supports
from .tails import StoreTail, anchor_of, body_tail, check_no_overlap, const_in_body, width_of

F32_DT = np.dtype(np.float32)


class ConvGeometry:
    """Everything static about one Conv node, mapped to 2-D (a 1-D conv is a 2-D conv of height 1)."""

    def __init__(self, kb: KernelBuilder, node: Node, w: np.ndarray):
        ctx = OpContext(node, lookup(node.domain, node.op_type))
        x_shape = kb.shape(node.inputs[0])
        if len(x_shape) not in (3, 4) or w.ndim != len(x_shape):
            raise Unsupported("only 1-D and 2-D convolutions")
        kernel = tuple(ctx.attr("kernel_shape") or w.shape[2:])
        if tuple(kernel) != tuple(w.shape[2:]):
            raise Unsupported("kernel_shape disagrees with the weights")
        win = window_geometry(ctx, x_shape[2:], kernel)
        if any(o is None or o <= 0 for o in win.out):
            raise Unsupported("empty output")
        self.group = int(ctx.attr("group") or 1)
        self.n_img, self.c = x_shape[:2]
        self.m = w.shape[0]
        if self.c % self.group or self.m % self.group or w.shape[1] * self.group != self.c:
            raise Unsupported("channels do not divide into groups")
        self.cg, self.mg = self.c // self.group, self.m // self.group
        if len(x_shape) == 3:  # 1-D: height 1
            self.h, self.w = 1, x_shape[2]
            self.kh, self.kw = 1, kernel[0]
            self.sh, self.sw = 1, win.strides[0]
            self.dh, self.dw = 1, win.dilations[0]
            self.pt, self.pl = 0, win.begin[0]
            self.oh, self.ow = 1, win.out[0]
        else:
            self.h, self.w = x_shape[2:]
            self.kh, self.kw = kernel
            self.sh, self.sw = win.strides
            self.dh, self.dw = win.dilations
            self.pt, self.pl = win.begin
            self.oh, self.ow = win.out
        self.hw, self.ohw = self.h * self.w, self.oh * self.ow
        self.k = self.cg * self.kh * self.kw
        self.pointwise = (self.kh == self.kw == 1 and self.sh == self.sw == 1 and self.pt == self.pl == 0
                          and self.oh == self.h and self.ow == self.w)



def _zero_fill(kb: KernelBuilder, dst, lo, hi) -> None:
    b = kb.builder
    with kb.for_range(lo, hi, name="z") as j:
        b.store(ir.Constant(F32, 0.0), b.gep(dst, [j], inbounds=True), align=4)


def _loop(b: ir.IRBuilder, start, end, name: str = "i"):
    """``for (i = start; i < end; ++i)`` in a plain builder (the shared helper functions have no KernelBuilder)."""
    return builder_loop(b, start, end, 1, name)


def _smax(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


IM2COL = "graphc.im2col"
_EVEN_LANES = ir.Constant(ir.VectorType(ir.IntType(32), VEC), list(range(0, 2 * VEC, 2)))
_IM2COL_PARAMS = ("ncp", "jc", "nc", "cg", "h", "w", "kh", "kw", "sh", "sw", "dh", "dw", "pt", "pl", "ow")
_FP = F32.as_pointer()


def im2col_function(module: ir.Module, pairs: bool = False) -> ir.Function:
    """The module's shared im2col block packer (built on first use), every geometry parameter at run time:

        void graphc.im2col(float* x, float* dst, i64 ncp, i64 jc, i64 nc, i64 cg, i64 h, i64 w, i64 kh,
                           i64 kw, i64 sh, i64 sw, i64 dh, i64 dw, i64 pt, i64 pl, i64 ow)

    writes ``dst[k*ncp + (n - jc)] = im2col(x)[k, n]`` for the columns ``jc <= n < jc + nc`` of one (image,
    group): per K row and output row, zeros | a copy of the input row (contiguous when ``sw == 1``) | zeros.

    ``pairs`` (bf16): ``graphc.im2col.bf16(x, dst, stage, ...)`` writes each K row into one of the two float
    rows of ``stage`` and, after every second row, rounds the two into bf16 pair row ``k/2`` of ``dst`` while
    they are still in L1 (an odd K's last row is paired with zeros)."""
    name = IM2COL + (".bf16" if pairs else "")
    fn = module.globals.get(name)
    if fn is not None:
        return fn
    pointers = [_FP, _FP, _FP] if pairs else [_FP, _FP]
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), pointers + [I64] * len(_IM2COL_PARAMS)), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    for ptr in fn.args[:len(pointers)]:
        ptr.add_attribute("noalias")
    x, dst = fn.args[:2]
    stage = fn.args[2] if pairs else None
    p = dict(zip(_IM2COL_PARAMS, fn.args[len(pointers):]))
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero_f = ir.Constant(F32, 0.0)
    ow_n = p["ow"]
    oh_first = b.sdiv(p["jc"], ow_n)
    n_end = b.add(p["jc"], p["nc"])
    oh_end = b.add(b.sdiv(b.sub(n_end, c64(1)), ow_n), c64(1))
    hw = b.mul(p["h"], p["w"])
    unit = b.icmp_signed("==", p["sw"], c64(1))

    def zeros(base, lo, hi):
        with _loop(b, lo, hi, "z") as j:
            b.store(zero_f, b.gep(base, [j]), align=4)

    with _loop(b, c64(0), p["cg"], "ci") as ci:
        xc = b.gep(x, [b.mul(ci, hw)])
        with _loop(b, c64(0), p["kh"], "kh") as kh:
            ih_off = b.sub(b.mul(kh, p["dh"]), p["pt"])
            with _loop(b, c64(0), p["kw"], "kw") as kw:
                krow = b.add(b.mul(b.add(b.mul(ci, p["kh"]), kh), p["kw"]), kw)
                if pairs:
                    odd = b.and_(krow, c64(1))
                    drow = b.gep(stage, [b.sub(b.mul(odd, p["ncp"]), p["jc"])])
                else:
                    drow = b.gep(dst, [b.sub(b.mul(krow, p["ncp"]), p["jc"])])
                off_w = b.sub(b.mul(kw, p["dw"]), p["pl"])
                # output columns whose input column ow*sw + off_w lies in [0, w)
                lo_w = b.sdiv(b.add(b.sub(c64(0), off_w), b.sub(p["sw"], c64(1))), p["sw"])
                lo_w = _smin(b, _smax(b, lo_w, c64(0)), ow_n)
                span = b.sub(p["w"], off_w)
                hi_w = b.sdiv(b.add(span, b.sub(p["sw"], c64(1))), p["sw"])
                hi_w = _smin(b, _smax(b, hi_w, lo_w), ow_n)
                with _loop(b, oh_first, oh_end, "oh") as oh:
                    row_n = b.mul(oh, ow_n)
                    ow_s = b.sub(_smax(b, p["jc"], row_n), row_n)
                    ow_e = b.sub(_smin(b, n_end, b.add(row_n, ow_n)), row_n)
                    drow_oh = b.gep(drow, [row_n])
                    ih = b.add(b.mul(oh, p["sh"]), ih_off)
                    inside = b.icmp_unsigned("<", ih, p["h"])
                    with b.if_else(inside) as (then, otherwise):
                        with then:
                            lo = _smin(b, _smax(b, lo_w, ow_s), ow_e)
                            hi = _smin(b, _smax(b, hi_w, lo), ow_e)
                            zeros(drow_oh, ow_s, lo)
                            src = b.gep(xc, [b.add(b.mul(ih, p["w"]), off_w)])
                            with b.if_else(unit) as (contiguous, strided):
                                with contiguous:
                                    with _loop(b, lo, hi, "cp") as j:
                                        b.store(b.load(b.gep(src, [j]), align=4), b.gep(drow_oh, [j]), align=4)
                                with strided:
                                    # stride 2 (downsampling convs): two vector loads and the even lanes
                                    # of both, 16 outputs a step (the vectoriser would use a gather, which
                                    # moves one element a cycle); the tail, up to 16, element by element
                                    with b.if_else(b.icmp_signed("==", p["sw"], c64(2))) as (two, other):
                                        with two:
                                            # a vector at j reads inputs 2j .. 2j+31, of which 2(hi-1) is the
                                            # last valid one: vectors while j + 17 <= hi
                                            nvec = b.sdiv(_smax(b, b.sub(b.sub(hi, lo), c64(1)), c64(0)), c64(VEC))
                                            with _loop(b, c64(0), nvec, "c2v") as v:
                                                j = b.add(lo, b.mul(v, c64(VEC)))
                                                pair = b.gep(src, [b.mul(j, c64(2))])
                                                v0 = b.load(b.bitcast(pair, VT.as_pointer()), align=4)
                                                v1 = b.load(b.bitcast(b.gep(pair, [c64(VEC)]), VT.as_pointer()),
                                                            align=4)
                                                even = b.shuffle_vector(v0, v1, _EVEN_LANES)
                                                b.store(even, b.bitcast(b.gep(drow_oh, [j]), VT.as_pointer()),
                                                        align=4)
                                            with _loop(b, b.add(lo, b.mul(nvec, c64(VEC))), hi, "c2") as j:
                                                x2 = b.load(b.gep(src, [b.mul(j, c64(2))]), align=4)
                                                b.store(x2, b.gep(drow_oh, [j]), align=4)
                                        with other:
                                            with _loop(b, lo, hi, "cs") as j:
                                                v = b.load(b.gep(src, [b.mul(j, p["sw"])]), align=4)
                                                b.store(v, b.gep(drow_oh, [j]), align=4)
                            zeros(drow_oh, hi, ow_e)
                        with otherwise:
                            zeros(drow_oh, ow_s, ow_e)
                if pairs:
                    with b.if_then(b.icmp_unsigned("!=", odd, c64(0))):
                        pair_dst = b.gep(dst, [b.mul(b.lshr(krow, c64(1)), p["ncp"])])
                        pair_rows(b, stage, b.gep(stage, [p["ncp"]]), pair_dst, p["nc"])
    if pairs:
        k = b.mul(b.mul(p["cg"], p["kh"]), p["kw"])
        with b.if_then(b.icmp_unsigned("!=", b.and_(k, c64(1)), c64(0))):
            pair_rows(b, stage, None, b.gep(dst, [b.mul(b.lshr(k, c64(1)), p["ncp"])]), p["nc"])
    b.ret_void()
    return fn


class Im2colB:
    """The GEMM's B operand for a conv: a K x NC block of im2col(X) gathered into scratch (rows of NCp floats)
    by the module's shared :func:`im2col_function`; with ``pairs`` (bf16), ceil(K/2) rows of NCp bf16 pairs."""

    def __init__(self, kb: KernelBuilder, geo: ConvGeometry, x_ptr: ir.Value, nc: int, pairs: bool = False):
        self.kb, self.geo, self.x = kb, geo, x_ptr
        self.ncp = -(-nc // VEC) * VEC
        self.pairs = pairs
        rows = -(-geo.k // 2) if pairs else geo.k
        self.scratch = kb.scratch(rows * self.ncp * 4)
        self.stage = kb.scratch(2 * self.ncp * 4) if pairs else None
        self.fn = im2col_function(kb.module, pairs)

    def block(self, bi, jc, nc):
        b, g = self.kb.builder, self.geo
        img, grp = b.udiv(bi, c64(g.group)), b.urem(bi, c64(g.group))
        x0 = b.gep(self.x, [b.add(b.mul(img, c64(g.c * g.hw)), b.mul(grp, c64(g.cg * g.hw)))], inbounds=True)
        consts = [self.ncp, None, None, g.cg, g.h, g.w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.ow]
        args = [c64(v) if v is not None else None for v in consts]
        args[1], args[2] = jc, nc
        pointers = [x0, self.scratch, self.stage] if self.pairs else [x0, self.scratch]
        b.call(self.fn, pointers + args)
        return self.scratch, 1, c64(self.ncp)


def _bias_adder(kb: KernelBuilder, b_val, b_const, geo: ConvGeometry):
    """acc + bias[channel] (the conv's own bias, before the tail), or the identity."""
    if b_val is None:
        return lambda channel, acc: acc
    if kb.dtype(b_val) != F32_DT or kb.shape(b_val) != (geo.m,):
        raise Unsupported("bias is not float32 of shape (M,)")
    ptr = kb.constant_array(np.asarray(b_const, np.float32)) if b_const is not None else kb.ptr(b_val)

    def add(channel, acc):
        b = kb.builder
        x = b.load(b.gep(ptr, [channel], inbounds=True), align=4)
        w = width_of(acc)
        return b.fadd(acc, splat(b, x, w) if w else x)

    return add


def build_conv(kb: KernelBuilder, node: Node, make_tail, const_of) -> None:
    """Emit Conv ``node``; ``make_tail(inner)`` takes the outputs (runs never cross an output channel plane)."""
    if node.op_type != "Conv" or len(node.inputs) < 2:
        raise Unsupported("not a Conv")
    x_val, w_val = node.inputs[0], node.inputs[1]
    b_val = node.inputs[2] if len(node.inputs) > 2 else None
    if kb.dtype(x_val) != F32_DT or kb.dtype(w_val) != F32_DT:
        raise Unsupported("only float32 convolutions")
    w = const_of(w_val)
    if w is None:
        raise Unsupported("weights are not constant")
    w = np.asarray(w, np.float32)
    geo = ConvGeometry(kb, node, w)
    add_bias = _bias_adder(kb, b_val, const_of(b_val), geo)
    tail = make_tail(geo.ohw)
    x_ptr = kb.ptr(x_val)
    if geo.cg == 1 and geo.mg <= 4 and geo.group > 1:
        _depthwise(kb, geo, x_ptr, w, add_bias, tail)
        return
    g = plan_gemm(geo.mg, geo.ohw, geo.k, geo.n_img * geo.group, threads_of(kb), bf16=runs_in_bf16(node))
    a_src = ConstA(kb, w.reshape(geo.group, geo.mg, geo.k), np.tile(np.arange(geo.group), geo.n_img), g.mr, g.bf16)
    if geo.pointwise:
        offsets = [(i * geo.c + grp * geo.cg) * geo.hw for i in range(geo.n_img) for grp in range(geo.group)]
        b_src = DirectB(kb, x_ptr, np.asarray(offsets, np.int64), geo.hw)
    else:
        b_src = Im2colB(kb, geo, x_ptr, g.nc, pairs=g.bf16)

    def sink(kb, bi, row, col, acc):
        b = kb.builder
        channel = b.add(b.mul(b.urem(bi, c64(geo.group)), c64(geo.mg)), row)
        flat = b.add(b.add(b.mul(bi, c64(geo.mg * geo.ohw)), b.mul(row, c64(geo.ohw))), col)
        tail.emit(flat, add_bias(channel, acc))

    emit_gemm(kb, g, a_src, b_src, sink)


def _depthwise(kb: KernelBuilder, geo: ConvGeometry, x_ptr, w: np.ndarray, add_bias, tail) -> None:
    """One output channel plane per unit; each output row accumulates its taps in a scratch row."""
    b = kb.builder
    keep_out_of_line(kb)
    owp = -(-geo.ow // VEC) * VEC
    row = kb.scratch(owp * 4)
    w_ptr = kb.constant_array(w.reshape(-1))
    taps = geo.kh * geo.kw
    lo, hi = kb.thread_range(geo.n_img * geo.m)
    with kb.for_range(lo, hi, name="plane") as u:
        img, co = b.udiv(u, c64(geo.m)), b.urem(u, c64(geo.m))
        ci = b.udiv(co, c64(geo.mg))  # one input channel per group
        xc = b.gep(x_ptr, [b.mul(b.add(b.mul(img, c64(geo.c)), ci), c64(geo.hw))], inbounds=True)
        wc = b.gep(w_ptr, [b.mul(co, c64(taps))], inbounds=True)
        with kb.for_range(0, geo.oh, name="oh") as oh:
            if supports(geo.sw, geo.dw):
                _depthwise_row_in_registers(kb, geo, xc, wc, oh, row)
            else:
                _depthwise_row_in_memory(kb, geo, xc, wc, oh, row)
            base = b.add(b.mul(u, c64(geo.ohw)), b.mul(oh, c64(geo.ow)))
            full, rem = divmod(geo.ow, VEC)
            for v in range(full):
                vec = b.load(b.bitcast(b.gep(row, [c64(v * VEC)]), VT.as_pointer()), align=64)
                tail.emit(b.add(base, c64(v * VEC)), add_bias(co, vec))
            if rem:
                with for_bits(kb, c64((1 << rem) - 1), c64(full * VEC)) as j:
                    x = b.load(b.gep(row, [j], inbounds=True), align=4)
                    tail.emit(b.add(base, j), add_bias(co, x))


def _depthwise_row_in_memory(kb: KernelBuilder, geo: ConvGeometry, xc, wc, oh, row) -> None:
    """Output row ``oh`` into ``row``, tap by tap over the columns each tap reaches (any stride/dilation)."""
    b = kb.builder
    _zero_fill(kb, row, c64(0), c64(geo.ow))

    def accumulate(kh, kw, ow, x):
        wv = b.load(b.gep(wc, [b.add(b.mul(kh, c64(geo.kw)), c64(kw))]), align=4)
        dst = b.gep(row, [ow], inbounds=True)
        b.store(b.fadd(b.load(dst, align=4), b.fmul(wv, x)), dst, align=4)

    for_each_tap(kb, geo, xc, oh, accumulate)


def _depthwise_row_in_registers(kb: KernelBuilder, geo: ConvGeometry, xc, wc, oh, row) -> None:
    """Output row ``oh`` into ``row``, 16 columns at a time accumulated in a register (column stride 1 or 2,
    see window.py), taps in the same order and with the same multiply-then-add as the loop above."""
    b = kb.builder
    win = Window(geo.h, geo.w, geo.kh, geo.kw, geo.sh, geo.sw, geo.dh, geo.pt, geo.pl, geo.oh, geo.ow)
    weights = [[splat(b, b.load(b.gep(wc, [c64(kh * geo.kw + kw)]), align=4)) for kw in range(geo.kw)]
               for kh in range(geo.kh)]

    def combine(acc, x, kh, kw):
        return b.fadd(acc, b.fmul(weights[kh][kw], x))

    with kb.for_range(0, win.vectors, name="v") as v:
        ow0 = b.mul(v, c64(VEC))
        acc = accumulate_row(kb, win, xc, oh, ow0, 0.0, combine)
        b.store(acc, b.bitcast(b.gep(row, [ow0], inbounds=True), VT.as_pointer()), align=4)


@node_emitter("Conv")
def emit_conv_node(kb: KernelBuilder, node: Node) -> None:
    out = node.outputs[0]
    check_no_overlap(kb, [out], node.inputs)
    build_conv(kb, node, lambda inner: StoreTail(kb, out), kb.const_value)


@fused_emitter("conv+epilogue")
def emit_conv_body(kb: KernelBuilder, kernel_node: Node, body: Graph) -> None:
    if kernel_node.attrs.get("kind") != "complex+epilogue":
        raise Unsupported("not a complex+epilogue body")
    anchor = anchor_of(body, ("Conv",))
    check_no_overlap(kb, body.outputs, anchor.inputs)
    build_conv(kb, anchor, lambda inner: body_tail(kb, body, anchor.outputs[0], inner),
               lambda v: const_in_body(kb, kernel_node, body, v))


__all__ = ["build_conv", "ConvGeometry", "I64", "math"]
