"""Sliding-window rows in registers: the inner loop shared by the pools and the depthwise convolution.

For one output row ``oh`` of one plane, each run of 16 output columns is accumulated in a ``<16 x float>``
over the window's taps, kh outer and kw inner (the reference's order), and handed back once. A tap is one
masked vector load when the column stride is 1, or two and a shuffle keeping the even lanes when it is 2; lanes
whose input column lies in the padding are masked off and read ``identity`` (masked lanes never touch memory,
so the address may point before or past the row); a tap row in the padding is skipped. Rows are often short
(7, 14, 28 outputs in late layers): LLVM's own vectorised loops would run such trip counts in their scalar
remainder, this does not.

Other column strides and column dilations are not handled here (:func:`supports` says which); the callers keep
a plain loop for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from ..kernel import F32, I1, KernelBuilder
from .gemm_driver import c64
from .microkernel import VEC, VT

I32 = ir.IntType(32)
I32V = ir.VectorType(I32, VEC)
MASK = ir.VectorType(I1, VEC)
_EVEN = ir.Constant(I32V, list(range(0, 2 * VEC, 2)))


@dataclass(frozen=True)
class Window:
    """A 2-D window over planes of ``h x w``: kernel, strides, row dilation, leading pads, output size."""

    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    pt: int
    pl: int
    oh: int
    ow: int

    @property
    def vectors(self) -> int:
        """16-column runs per output row."""
        return -(-self.ow // VEC)


def supports(sw: int, dw: int) -> bool:
    return sw in (1, 2) and dw == 1


def lane_mask(kb: KernelBuilder, first: ir.Value, end: int) -> ir.Value:
    """<16 x i1>: lanes ``first + i < end``."""
    b = kb.builder
    left = kb.umin(b.sub(c64(end), first), c64(VEC))
    return b.bitcast(b.trunc(b.sub(b.shl(c64(1), left), c64(1)), ir.IntType(VEC)), MASK)


def accumulate_row(kb: KernelBuilder, win: Window, plane: ir.Value, oh: ir.Value, ow0: ir.Value,
                   identity: float, combine: Callable[[ir.Value, ir.Value, int, int], ir.Value]) -> ir.Value:
    """The <16 x float> of output columns ``ow0 .. ow0 + 15`` of row ``oh``: ``identity`` folded with every tap
    by ``combine(acc, x, kh, kw)`` (``x`` the tap's 16 inputs; padding lanes read ``identity``)."""
    b = kb.builder
    mload = kb.intrinsic("llvm.masked.load.v16f32.p0", VT, [VT.as_pointer(), I32, MASK, VT])
    fill = ir.Constant(VT, [identity] * VEC)
    lanes = [ir.Constant(I32V, list(range(k * VEC, (k + 1) * VEC))) for k in range(win.sw)]
    width, zero = ir.Constant(I32V, [win.w] * VEC), ir.Constant(I32V, [0] * VEC)

    def splat(v):
        vec = b.insert_element(ir.Constant(I32V, None), b.trunc(v, I32), ir.Constant(I32, 0))
        return b.shuffle_vector(vec, ir.Constant(I32V, None), ir.Constant(I32V, [0] * VEC))

    acc = fill
    for kh in range(win.kh):
        ih = b.add(b.mul(oh, c64(win.sh)), c64(kh * win.dh - win.pt))
        inside = b.icmp_unsigned("<", ih, c64(win.h))
        before = b.block
        with b.if_then(inside):
            row = b.gep(plane, [b.mul(ih, c64(win.w))])
            row_acc = acc
            for kw in range(win.kw):
                c0 = b.add(b.mul(ow0, c64(win.sw)), c64(kw - win.pl))  # input column of lane 0
                parts = []
                for k in range(win.sw):
                    cols = b.add(splat(c0), lanes[k])
                    ok = b.and_(b.icmp_signed(">=", cols, zero), b.icmp_signed("<", cols, width))
                    ptr = b.bitcast(b.gep(row, [b.add(c0, c64(k * VEC))]), VT.as_pointer())
                    parts.append(b.call(mload, [ptr, ir.Constant(I32, 4), ok, fill]))
                x = parts[0] if win.sw == 1 else b.shuffle_vector(parts[0], parts[1], _EVEN)
                row_acc = combine(row_acc, x, kh, kw)
            after = b.block
        merged = b.phi(VT)
        merged.add_incoming(row_acc, after)
        merged.add_incoming(acc, before)
        acc = merged
    return acc


def tap_columns(geo, kw: int) -> tuple[int, int]:
    """The output columns ``[lo, hi)`` whose tap ``kw`` reads inside the input row (``geo``: any object with
    ``w, sw, dw, pl, ow``; pools' and convs' geometries)."""
    off = kw * geo.dw - geo.pl
    lo = 0 if off >= 0 else (-off + geo.sw - 1) // geo.sw
    hi = 0 if geo.w - off <= 0 else -(-(geo.w - off) // geo.sw)
    lo, hi = min(max(lo, 0), geo.ow), min(max(hi, 0), geo.ow)
    return lo, max(lo, hi)


def for_each_tap(kb: KernelBuilder, geo, plane: ir.Value, oh: ir.Value,
                 body: Callable[[ir.Value, int, ir.Value, ir.Value], None]) -> None:
    """The plain loop nest for any stride and dilation: for every tap (kh outer, kw inner) whose input row lies
    inside, ``body(kh, kw, ow, x)`` for each output column ``ow`` the tap reaches, ``x`` the input it reads
    (``geo`` also needs ``h, kh, kw, sh, dh, pt``)."""
    b = kb.builder
    with kb.for_range(0, geo.kh, name="kh") as kh:
        ih = b.add(b.mul(oh, c64(geo.sh)), b.sub(b.mul(kh, c64(geo.dh)), c64(geo.pt)))
        with b.if_then(b.icmp_unsigned("<", ih, c64(geo.h))):
            xrow = b.gep(plane, [b.mul(ih, c64(geo.w))])
            for kw in range(geo.kw):
                lo_w, hi_w = tap_columns(geo, kw)
                if lo_w >= hi_w:
                    continue
                src = b.gep(xrow, [c64(kw * geo.dw - geo.pl)])
                with kb.for_range(lo_w, hi_w, name="ow") as ow:
                    body(kh, kw, ow, b.load(b.gep(src, [b.mul(ow, c64(geo.sw))]), align=4))


def masked_store(kb: KernelBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
    mstore = kb.intrinsic("llvm.masked.store.v16f32.p0", ir.VoidType(), [VT, VT.as_pointer(), I32, MASK])
    kb.builder.call(mstore, [value, kb.builder.bitcast(ptr, VT.as_pointer()), ir.Constant(I32, 4), mask])


def masked_load(kb: KernelBuilder, ptr: ir.Value, mask: ir.Value, fill: float = 0.0) -> ir.Value:
    mload = kb.intrinsic("llvm.masked.load.v16f32.p0", VT, [VT.as_pointer(), I32, MASK, VT])
    return kb.builder.call(mload, [kb.builder.bitcast(ptr, VT.as_pointer()), ir.Constant(I32, 4), mask,
                                   ir.Constant(VT, [fill] * VEC)])


__all__ = ["Window", "supports", "accumulate_row", "for_each_tap", "tap_columns", "lane_mask", "masked_store",
           "masked_load", "F32"]
