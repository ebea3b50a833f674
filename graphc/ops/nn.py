"""Ops: convolutions and spatial sampling — Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv, Resize,
Upsample, GridSample, AffineGrid, RoiAlign, Dropout.

Layout is always NC + spatial dims. The sliding-window geometry (kernel, strides, dilations, pads and
``auto_pad``, ceil mode) is computed once by :func:`window_geometry`, shared with pooling.py.

Conv is im2col + one grouped matmul: the padded input's windows (a ``sliding_window_view``) are copied once into a
``(N, group, C/group * prod(kernel), prod(out))`` matrix that the ``(group, M/group, C/group * prod(kernel))``
weights multiply (BLAS). ConvTranspose is the reverse: one matmul gives every (kernel tap, input position)
contribution, then one strided add per kernel tap scatters them into the output (col2im).

Resize is separable: each resized axis is one product with an ``(out, in)`` interpolation matrix (linear,
cubic, antialias filters) or one ``np.take`` (nearest, which keeps integer data exact). The tap positions and
weights follow the ONNX reference: taps at ``ceil(x) - 1 + i``, indices clamped to the edge (unless
``exclude_outside``), ``tf_crop_and_resize`` positions outside the input replaced by ``extrapolation_value``
axis by axis.

GridSample, DeformConv and RoiAlign sample with per-axis taps (index, weight, valid) combined over all axes
(:func:`_gather_taps`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..ir.types import TensorType
from .linalg import dims_product, upcast
from .registry import Cost, FusionClass, OpContext, OpDef, register

# -- window geometry (shared with pooling.py) -----------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry over the spatial axes. ``out`` entries are None when the input size is not static;
    ``end`` are the declared end pads (ceil mode may read up to :meth:`padded_end` past them)."""

    kernel: tuple
    strides: tuple
    dilations: tuple
    begin: tuple
    end: tuple
    out: tuple

    @property
    def extent(self) -> tuple:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    def padded_end(self, in_sizes) -> tuple:
        """End pads large enough for every window to lie inside the padded input."""
        return tuple(max(e, (o - 1) * s + x - b - n) for e, o, s, x, b, n in
                     zip(self.end, self.out, self.strides, self.extent, self.begin, in_sizes))


def window_geometry(ctx: OpContext, in_sizes, kernel, *, ceil_mode: bool = False) -> Window:
    """The window geometry of a Conv/pool node for spatial input sizes ``in_sizes`` (ints, or symbolic dims)."""
    nd = len(kernel)
    strides = tuple(ctx.attr("strides") or [1] * nd)
    dilations = tuple(ctx.attr("dilations") or [1] * nd)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    pads = list(ctx.attr("pads") or [0] * (2 * nd))
    begin, end, out = [], [], []
    for i in range(nd):
        n, k, s, d = in_sizes[i], kernel[i], strides[i], dilations[i]
        extent = (k - 1) * d + 1 if isinstance(k, int) else None
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if not isinstance(n, int) or extent is None:
                begin.append(0), end.append(0), out.append(None)
                continue
            o = -(-n // s)
            total = max(0, (o - 1) * s + extent - n)
            b = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(b), end.append(total - b), out.append(o)
            continue
        b, e = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
        begin.append(b), end.append(e)
        if not isinstance(n, int) or extent is None:
            out.append(None)
            continue
        span = n + b + e - extent
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= n + b:  # the last window must start inside the input or its begin pad
            o -= 1
        out.append(max(o, 0))
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


def pad_spatial(x: np.ndarray, begin, end, value=0) -> np.ndarray:
    """x padded on its spatial axes (2...) with ``value``; negative pads crop."""
    if not any(begin) and not any(end):
        return x
    crop = tuple(slice(max(-b, 0), x.shape[2 + i] - max(-e, 0)) for i, (b, e) in enumerate(zip(begin, end)))
    x = x[(slice(None), slice(None)) + crop]
    widths = [(0, 0), (0, 0)] + [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    return np.pad(x, widths, constant_values=value)


def padded_input(x: np.ndarray, win: Window, value=0) -> np.ndarray:
    """x padded so that every window of ``win`` lies inside it."""
    return pad_spatial(x, win.begin, win.padded_end(x.shape[2:]), value)


def window_taps(xp: np.ndarray, win: Window):
    """Yield ``(tap, view)`` for each kernel tap: ``view`` is the (N, C, *out) strided view of the padded input
    ``xp`` that the tap reads for every output position."""
    for tap in itertools.product(*(range(k) for k in win.kernel)):
        sl = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                   for t, d, o, s in zip(tap, win.dilations, win.out, win.strides))
        yield tap, xp[(slice(None), slice(None)) + sl]


def window_infer(ctx: OpContext, channels, kernel, *, ceil_mode: bool = False) -> list | None:
    """[TensorType(N, channels, *out)] for a windowed op over input 0, in input 0's dtype."""
    tx = ctx.input_type(0)
    if tx is None:
        return None
    if tx.shape is None or kernel is None:
        return [TensorType(tx.dtype, None)]
    win = window_geometry(ctx, tx.shape[2:], kernel, ceil_mode=ceil_mode)
    return [TensorType(tx.dtype, (tx.shape[0], channels) + win.out)]


def io_bytes(ctx: OpContext) -> tuple[int, int]:
    """Static bytes read (all inputs) and written (all outputs) of a node."""
    read = sum(t.nbytes() or 0 for t in (ctx.input_type(i) for i in range(ctx.num_inputs)) if t is not None)
    written = sum(v.type.nbytes() or 0 for v in ctx.node.outputs
                  if v is not None and isinstance(v.type, TensorType))
    return read, written


def output_shape(ctx: OpContext, opdef: OpDef, i: int = 0) -> tuple | None:
    """Output i's shape: the graph's when static, else the op's own rule's."""
    outs = ctx.node.outputs
    if i < len(outs) and outs[i] is not None and isinstance(outs[i].type, TensorType) and outs[i].type.is_static:
        return outs[i].type.shape
    types = opdef.infer(ctx)
    return types[i].shape if types and types[i] is not None else None


# -- Conv family ----------------------------------------------------------------------------------------------


def _kernel(ctx: OpContext, w_shape) -> tuple | None:
    kernel = ctx.attr("kernel_shape")
    if kernel:
        return tuple(kernel)
    return None if w_shape is None else tuple(w_shape[2:])


def conv(x: np.ndarray, w: np.ndarray, win: Window, group: int, pad_value=0) -> np.ndarray:
    """Grouped N-D convolution (cross-correlation) of x (N, C, *in) with w (M, C/group, *kernel): im2col + matmul.
    Computes in x's dtype (callers upcast)."""
    n, c = x.shape[:2]
    m, nd = w.shape[0], len(win.kernel)
    if any(o <= 0 for o in win.out):
        return np.zeros((n, m) + tuple(max(o, 0) for o in win.out), x.dtype)
    kprod, oprod = math.prod(win.kernel), math.prod(win.out)
    pointwise = (all(k == 1 for k in win.kernel) and all(s == 1 for s in win.strides)
                 and not any(win.begin) and not any(win.end))
    if pointwise:
        cols = x.reshape(n, group, c // group, oprod)
    else:
        xp = padded_input(x, win, pad_value)
        view = sliding_window_view(xp, win.extent, axis=tuple(range(2, 2 + nd)))
        view = view[(slice(None), slice(None))
                    + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(win.out, win.strides))
                    + tuple(slice(None, None, d) for d in win.dilations)]
        # (N, C, *out, *k) -> (N, C, *k, *out): the copy reads rows of the input, writes contiguous columns
        order = (0, 1) + tuple(range(2 + nd, 2 + 2 * nd)) + tuple(range(2, 2 + nd))
        cols = view.transpose(order).reshape(n, group, (c // group) * kprod, oprod)
    y = np.matmul(w.reshape(group, m // group, -1), cols)
    return y.reshape((n, m) + tuple(win.out))


def _bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        y += b.reshape((-1,) + (1,) * (y.ndim - 2)).astype(y.dtype, copy=False)
    return y


def _conv_flops(ctx: OpContext, opdef: OpDef, w_index: int = 1) -> int:
    """2 * N * Cout * prod(out) * Cin/group * prod(kernel): each output element is a dot product over w[m]."""
    tw = ctx.input_type(w_index)
    out = output_shape(ctx, opdef)
    if tw is None or tw.shape is None or out is None:
        return 0
    per_output, n_out = dims_product(tw.shape[1:]), dims_product(out)  # Cin/group * prod(kernel)
    return 2 * n_out * per_output if n_out is not None and per_output is not None else 0


class _ConvLike(OpDef):
    """Shape rule and cost shared by Conv, ConvInteger, QLinearConv: input x at ``x_index``, w at ``w_index``."""

    fusion = FusionClass.COMPLEX
    x_index, w_index = 0, 1
    out_dtype = None  # None: x's dtype, or that of input ``out_dtype_index`` when given
    out_dtype_index = None

    def infer(self, ctx):
        tx, tw = ctx.input_type(self.x_index), ctx.input_type(self.w_index)
        if tx is None:
            return None
        dtype = self.out_dtype or tx.dtype
        if self.out_dtype_index is not None and ctx.input_type(self.out_dtype_index) is not None:
            dtype = ctx.input_type(self.out_dtype_index).dtype
        if tx.shape is None or tw is None or tw.shape is None:
            return [TensorType(dtype, None)]
        win = window_geometry(ctx, tx.shape[2:], _kernel(ctx, tw.shape))
        return [TensorType(dtype, (tx.shape[0], tw.shape[0]) + win.out)]

    def cost(self, ctx):
        read, written = io_bytes(ctx)
        return Cost(_conv_flops(ctx, self, self.w_index), read, written)


@register
class Conv(_ConvLike):
    op_type = "Conv"
    attrs = {"group": 1, "auto_pad": "NOTSET"}

    def compute(self, ctx, x, w, b=None):
        win = window_geometry(ctx, x.shape[2:], _kernel(ctx, w.shape))
        cx, cw, cb = upcast(x, w, b)
        return _bias(conv(cx, cw, win, ctx.attr("group")), cb).astype(x.dtype, copy=False)


def _int_conv(ctx, x, x_zp, w, w_zp) -> np.ndarray:
    """Integer convolution of (x - x_zp) and (w - w_zp) (w_zp scalar or per output channel), exact in float64."""
    xf = x.astype(np.float64) - (0 if x_zp is None else np.float64(np.asarray(x_zp).reshape(-1)[0]))
    wf = w.astype(np.float64)
    if w_zp is not None:
        w_zp = np.asarray(w_zp, np.float64)
        wf -= w_zp.reshape((-1,) + (1,) * (w.ndim - 1)) if w_zp.size > 1 else w_zp.reshape(())
    win = window_geometry(ctx, x.shape[2:], _kernel(ctx, w.shape))
    return conv(xf, wf, win, ctx.attr("group"))


@register
class ConvInteger(_ConvLike):
    op_type = "ConvInteger"
    attrs = {"group": 1, "auto_pad": "NOTSET"}
    out_dtype = np.dtype(np.int32)

    def compute(self, ctx, x, w, x_zp=None, w_zp=None):
        return np.rint(_int_conv(ctx, x, x_zp, w, w_zp)).astype(np.int32)


@register
class QLinearConv(_ConvLike):
    """y = saturate(round_half_even((conv(x - x_zp, w - w_zp) + B) * x_scale * w_scale / y_scale) + y_zp)."""

    op_type = "QLinearConv"
    attrs = {"group": 1, "auto_pad": "NOTSET"}
    w_index = 3
    out_dtype_index = 7  # y_zero_point

    def compute(self, ctx, x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, b=None):
        acc = _bias(_int_conv(ctx, x, x_zp, w, w_zp), b)
        w_scale = np.asarray(w_scale, np.float64).reshape(-1)
        scale = float(x_scale) * (w_scale if w_scale.size > 1 else w_scale[0]) / float(y_scale)
        if np.ndim(scale):
            scale = scale.reshape((-1,) + (1,) * (acc.ndim - 2))
        out_dtype = y_zp.dtype if y_zp is not None else x.dtype
        y = np.rint(acc * scale) + (0 if y_zp is None else float(np.asarray(y_zp).reshape(-1)[0]))
        info = np.iinfo(out_dtype)
        return np.clip(y, info.min, info.max).astype(out_dtype)


# -- ConvTranspose --------------------------------------------------------------------------------------------


def _conv_transpose_geometry(ctx: OpContext, in_sizes, kernel):
    """(pads_begin, out_sizes) of a ConvTranspose; out entries are None when not static."""
    nd = len(kernel)
    strides = ctx.attr("strides") or [1] * nd
    dilations = ctx.attr("dilations") or [1] * nd
    out_pad = ctx.attr("output_padding") or [0] * nd
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    pads = ctx.attr("pads")
    out_shape = ctx.attr("output_shape")
    if out_shape and len(out_shape) == nd + 2:  # some exporters give the full shape
        out_shape = out_shape[2:]
    begin, out = [], []
    for i in range(nd):
        n, s, k, d, op = in_sizes[i], strides[i], kernel[i], dilations[i], out_pad[i]
        if not isinstance(n, int) or not isinstance(k, int):
            begin.append(0), out.append(out_shape[i] if out_shape else None)
            continue
        full = s * (n - 1) + op + (k - 1) * d + 1  # the output with no padding removed
        if pads is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # SAME aims at in * stride, but never pads negatively (as onnx shape inference and onnxruntime)
            total = full - out_shape[i] if out_shape else max(full - n * s, 0)
            o = full - total
            begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
            out.append(o)
        else:
            b, e = (pads[i], pads[i + nd]) if pads else (0, 0)
            begin.append(b)
            out.append(out_shape[i] if out_shape else full - b - e)
    return begin, out


@register
class ConvTranspose(OpDef):
    """Gradient of Conv: x (N, C, *in), w (C, M/group, *kernel) -> (N, M, *out). Input position i with kernel tap
    t lands on output position ``i * stride + t * dilation - pad_begin``."""

    op_type = "ConvTranspose"
    fusion = FusionClass.COMPLEX
    attrs = {"group": 1, "auto_pad": "NOTSET"}

    def compute(self, ctx, x, w, b=None):
        dtype = x.dtype
        x, w, b = upcast(x, w, b)
        group = ctx.attr("group")
        kernel = _kernel(ctx, w.shape)
        nd = len(kernel)
        strides = ctx.attr("strides") or [1] * nd
        dilations = ctx.attr("dilations") or [1] * nd
        begin, out = _conv_transpose_geometry(ctx, x.shape[2:], kernel)
        n, c = x.shape[:2]
        in_sizes = x.shape[2:]
        m = w.shape[1] * group
        # every (output channel, tap) contribution of every input position: (N, group, M/group * taps, prod(in))
        wg = w.reshape(group, c // group, -1).transpose(0, 2, 1)
        contrib = np.matmul(wg, x.reshape(n, group, c // group, -1)).reshape((n, m) + tuple(kernel) + in_sizes)
        full = [s * (i - 1) + (k - 1) * d + 1 for s, i, k, d in zip(strides, in_sizes, kernel, dilations)]
        # the full buffer must also cover [begin, begin + out) (output_padding / output_shape may extend it)
        lo = [min(0, b) for b in begin]
        hi = [max(f, b + o) for f, b, o in zip(full, begin, out)]
        buf = np.zeros((n, m) + tuple(h - l for h, l in zip(hi, lo)), x.dtype)
        for tap in itertools.product(*(range(k) for k in kernel)):
            sl = tuple(slice(t * d - l, t * d - l + (i - 1) * s + 1, s)
                       for t, d, l, i, s in zip(tap, dilations, lo, in_sizes, strides))
            buf[(slice(None), slice(None)) + sl] += contrib[(slice(None), slice(None)) + tap]
        y = buf[(slice(None), slice(None)) + tuple(slice(b - l, b - l + o) for b, l, o in zip(begin, lo, out))]
        return _bias(np.ascontiguousarray(y), b).astype(dtype, copy=False)

    def infer(self, ctx):
        tx, tw = ctx.input_type(0), ctx.input_type(1)
        if tx is None:
            return None
        if tx.shape is None or tw is None or tw.shape is None:
            return [TensorType(tx.dtype, None)]
        m = tw.shape[1] * ctx.attr("group") if isinstance(tw.shape[1], int) else None
        _, out = _conv_transpose_geometry(ctx, tx.shape[2:], _kernel(ctx, tw.shape))
        return [TensorType(tx.dtype, (tx.shape[0], m) + tuple(out))]

    def cost(self, ctx):
        """2 * N * Cin * prod(in) * Cout/group * prod(kernel): each input element meets each (Cout/group, tap)."""
        read, written = io_bytes(ctx)
        tx, tw = ctx.input_type(0), ctx.input_type(1)
        n_in = dims_product(tx.shape) if tx is not None else None
        per_input = dims_product(tw.shape[1:]) if tw is not None and tw.shape is not None else None
        return Cost(2 * n_in * per_input if n_in is not None and per_input is not None else 0, read, written)


# -- sampling helpers (GridSample, DeformConv, RoiAlign) ------------------------------------------------------


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a, at distances t."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Coordinates reflected at lo and hi (repeatedly) until inside [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = lo - x, x - hi
    out = x
    for dist, near, far, mask in ((below, lo, hi, x < lo), (above, hi, lo, x > hi)):
        flips = np.floor(dist / span)
        rest = dist - flips * span
        sign = 1 if near == lo else -1
        reflected = np.where(flips % 2 == 0, near + sign * rest, far - sign * rest)
        out = np.where(mask, reflected, out)
    return out


def _axis_taps(coord: np.ndarray, mode: str, cubic_a: float = -0.75):
    """Interpolation taps along one axis at float coordinates: a list of (integer index, weight)."""
    if mode == "nearest":
        return [(coord.astype(np.int64), np.ones_like(coord))]
    base = np.floor(coord)
    t = coord - base
    base = base.astype(np.int64)
    if mode == "linear":
        return [(base, 1 - t), (base + 1, t)]
    return [(base + i, _cubic_kernel(t - i, cubic_a)) for i in (-1, 0, 1, 2)]


def _gather_taps(x_last: np.ndarray, lead: tuple, axis_taps: list, sizes, padding: str, bounds=None):
    """Sum over every combination of per-axis taps of weight * x_last[lead + indices].

    ``x_last`` holds the channels last (..., *spatial, C); ``lead`` indexes its leading axes (broadcastable
    to the sample shape). ``padding``: 'zeros' (taps outside read 0), 'border' (clamped) or 'reflection'
    (reflected into ``bounds[i]`` = (lo, hi)). Returns sample shape + (C,), in float64.
    """
    total = 0.0
    for combo in itertools.product(*axis_taps):
        weight, valid, idx = 1.0, True, []
        for axis, (index, w) in enumerate(combo):
            size = sizes[axis]
            if padding == "zeros":
                valid = valid & (index >= 0) & (index < size)
            elif padding == "reflection":
                index = _reflect(index.astype(np.float64), *bounds[axis]).astype(np.int64)
            idx.append(np.clip(index, 0, size - 1))
            weight = weight * w
        if padding == "zeros":
            weight = weight * valid
        total = total + x_last[lead + tuple(idx)] * np.asarray(weight)[..., None]
    return total


# -- GridSample / AffineGrid ----------------------------------------------------------------------------------


@register
class GridSample(OpDef):
    """Samples x (N, C, *in) at grid (N, *out, nd) locations (normalised to [-1, 1], last axis x, y, z...).

    Before opset 20 the modes were called bilinear/bicubic (2-D only)."""

    op_type = "GridSample"
    fusion = FusionClass.OPAQUE
    attrs = {"align_corners": 0, "mode": "linear", "padding_mode": "zeros"}

    def compute(self, ctx, x, grid):
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(ctx.attr("mode"), ctx.attr("mode"))
        padding = ctx.attr("padding_mode")
        align = bool(ctx.attr("align_corners"))
        sizes = x.shape[2:]
        nd = len(sizes)
        coords, bounds = [], []
        for axis in range(nd):
            g = grid[..., nd - 1 - axis]  # the grid's last axis lists x (the last spatial axis) first
            size = sizes[axis]
            # denormalise in the grid's precision, as the reference does
            c = ((g + 1) / 2 * (size - 1) if align else ((g + 1) * size - 1) / 2).astype(np.float64)
            lo, hi = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
            if mode == "nearest":
                c = np.rint(c)
            if padding == "border":
                c = np.where((c < lo) | (c > hi), np.clip(c, 0, size - 1), c)
            elif padding == "reflection":
                c = _reflect(c, lo, hi)
            coords.append(c)
            bounds.append((lo, hi))
        taps = [_axis_taps(c, mode) for c in coords]
        x_last = np.moveaxis(x.astype(np.float64), 1, -1)
        lead = (np.arange(x.shape[0]).reshape((-1,) + (1,) * nd),)
        y = _gather_taps(x_last, lead, taps, sizes, padding, bounds)
        return np.moveaxis(np.asarray(y), -1, 1).astype(x.dtype)

    def infer(self, ctx):
        tx, tg = ctx.input_type(0), ctx.input_type(1)
        if tx is None:
            return None
        if tx.shape is None or tg is None or tg.shape is None:
            return [TensorType(tx.dtype, None)]
        return [TensorType(tx.dtype, (tx.shape[0], tx.shape[1]) + tuple(tg.shape[1:-1]))]


@register
class AffineGrid(OpDef):
    """theta (N, nd, nd+1) and size (N, C, *spatial) -> grid (N, *spatial, nd) of normalised (x, y, z...)."""

    op_type = "AffineGrid"
    fusion = FusionClass.OPAQUE
    attrs = {"align_corners": 0}

    def compute(self, ctx, theta, size):
        spatial = [int(s) for s in size[2:]]
        align = ctx.attr("align_corners")
        axes = []
        for n in spatial:
            if align:
                axes.append(np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1))
            else:
                axes.append((np.arange(n) * 2.0 + 1) / n - 1)
        mesh = np.meshgrid(*axes, indexing="ij")
        # base points (*spatial, nd + 1) as (x, y, z..., 1): x varies along the last spatial axis
        base = np.stack(list(mesh[::-1]) + [np.ones(spatial)], axis=-1)
        ct = theta.astype(np.float64)
        grid = np.einsum("...k,njk->n...j", base, ct)
        return grid.astype(theta.dtype)

    def infer(self, ctx):
        tt = ctx.input_type(0)
        size = ctx.const(1)
        if tt is None:
            return None
        if size is None:
            return [TensorType(tt.dtype, None)]
        size = [int(s) for s in size]
        return [TensorType(tt.dtype, (size[0],) + tuple(size[2:]) + (len(size) - 2,))]


# -- DeformConv -----------------------------------------------------------------------------------------------


@register
class DeformConv(OpDef):
    """Conv whose kernel taps are displaced per output position by ``offset`` (N, offset_group * prod(k) * nd,
    *out) and scaled by ``mask`` (N, offset_group * prod(k), *out); displaced taps are sampled bilinearly,
    zero outside the input."""

    op_type = "DeformConv"
    fusion = FusionClass.OPAQUE
    attrs = {"group": 1, "offset_group": 1}

    def compute(self, ctx, x, w, offset, b=None, mask=None):
        dtype = x.dtype
        n, c = x.shape[:2]
        sizes = x.shape[2:]
        nd = len(sizes)
        kernel = _kernel(ctx, w.shape)
        strides = ctx.attr("strides") or [1] * nd
        dilations = ctx.attr("dilations") or [1] * nd
        pads = ctx.attr("pads") or [0] * (2 * nd)
        og = ctx.attr("offset_group")
        out = offset.shape[2:]
        kshape = (n, og) + tuple(kernel) + tuple(out)
        offset = offset.astype(np.float64).reshape((n, og) + tuple(kernel) + (nd,) + tuple(out))
        mask = np.ones(kshape) if mask is None else mask.astype(np.float64).reshape(kshape)
        # sample coordinates per axis, shape (N, og, *k, *out)
        taps = []
        for axis in range(nd):
            tap_pos = (np.arange(kernel[axis]) * dilations[axis]).reshape(
                (kernel[axis],) + (1,) * (nd - 1 - axis) + (1,) * nd)
            out_pos = (np.arange(out[axis]) * strides[axis] - pads[axis]).reshape((out[axis],) + (1,) * (nd - 1 - axis))
            coord = tap_pos + out_pos + offset[(slice(None),) * (2 + nd) + (axis,)]
            taps.append(_axis_taps(coord, "linear"))
        # x as (N, og, *in, C/og): one gather serves each offset group's channels
        x_last = np.moveaxis(x.astype(np.float64).reshape((n, og, c // og) + sizes), 2, -1)
        lead = (np.arange(n).reshape((-1,) + (1,) * (1 + 2 * nd)), np.arange(og).reshape((-1,) + (1,) * (2 * nd)))
        sampled = _gather_taps(x_last, lead, taps, sizes, "zeros") * mask[..., None]  # (N, og, *k, *out, C/og)
        # -> im2col columns (N, C, *k, prod(out)), then the grouped matmul of conv()
        cols = np.moveaxis(sampled, -1, 2).reshape(n, c, math.prod(kernel), math.prod(out))
        group = ctx.attr("group")
        m = w.shape[0]
        y = np.matmul(w.astype(np.float64).reshape(group, m // group, -1), cols.reshape(n, group, -1, math.prod(out)))
        return _bias(y.reshape((n, m) + tuple(out)), b).astype(dtype)

    def infer(self, ctx):
        tx, tw = ctx.input_type(0), ctx.input_type(1)
        if tx is None:
            return None
        if tx.shape is None or tw is None or tw.shape is None:
            return [TensorType(tx.dtype, None)]
        win = window_geometry(ctx, tx.shape[2:], _kernel(ctx, tw.shape))
        return [TensorType(tx.dtype, (tx.shape[0], tw.shape[0]) + win.out)]

    def cost(self, ctx):
        read, written = io_bytes(ctx)
        return Cost(_conv_flops(ctx, self), read, written)


# -- RoiAlign -------------------------------------------------------------------------------------------------


@register
class RoiAlign(OpDef):
    """Pools x (N, C, H, W) over each roi (x1, y1, x2, y2) of image batch_indices[r] into (output_height,
    output_width) bins, each the avg (or max) of sampling_ratio^2 bilinear samples (adaptive when 0).

    Follows the reference: samples beyond one pixel outside the map count as 0; 'max' takes the max over samples
    of the max over the 4 weighted corner terms; opset 10 (no coordinate_transformation_mode) is
    'output_half_pixel' with rois at least 1x1."""

    op_type = "RoiAlign"
    fusion = FusionClass.OPAQUE

    def compute(self, ctx, x, rois, batch_indices):
        oh, ow = ctx.attr("output_height", 1), ctx.attr("output_width", 1)
        ratio, scale = ctx.attr("sampling_ratio", 0), ctx.attr("spatial_scale", 1.0)
        half_pixel = ctx.attr("coordinate_transformation_mode", "output_half_pixel") == "half_pixel"
        is_max = ctx.attr("mode", "avg") == "max"
        n, c, height, width = x.shape
        xf = x.astype(np.float64)
        y = np.zeros((len(rois), c, oh, ow))
        for r, (roi, bi) in enumerate(zip(rois.astype(np.float64), batch_indices)):
            start = roi[:2] * scale - (0.5 if half_pixel else 0.0)  # (x, y)
            extent = roi[2:] * scale - (0.5 if half_pixel else 0.0) - start
            if not half_pixel:
                extent = np.maximum(extent, 1.0)
            bins = extent / (ow, oh)
            grid = [int(ratio) if ratio > 0 else int(np.ceil(e / o)) for e, o in zip(extent, (ow, oh))]
            # per axis (y then x): sample positions (bins, samples per bin), their low/high pixels and fraction
            axes = []
            for st, bsz, g, nb, limit in zip(start[::-1], bins[::-1], grid[::-1], (oh, ow), (height, width)):
                pos = st + np.arange(nb)[:, None] * bsz + (np.arange(g)[None, :] + 0.5) * bsz / max(g, 1)
                inside = (pos >= -1.0) & (pos <= limit)
                pos = np.maximum(pos, 0)
                low = pos.astype(np.int64)
                at_end = low >= limit - 1
                low = np.where(at_end, limit - 1, low)
                high = np.where(at_end, limit - 1, low + 1)
                frac = np.where(at_end, 0.0, pos - low)
                axes.append((low, high, frac, inside))
            (yl, yh, fy, iny), (xl, xh, fx, inx) = axes
            img = xf[int(bi)]
            valid = iny[:, :, None, None] & inx[None, None, :, :]
            # the 4 weighted corner terms, each (C, oh, samples_y, ow, samples_x)
            terms = [img[:, yi[:, :, None, None], xi[None, None, :, :]]
                     * np.where(valid, wy[:, :, None, None] * wx[None, None, :, :], 0.0)
                     for yi, wy in ((yl, 1 - fy), (yh, fy)) for xi, wx in ((xl, 1 - fx), (xh, fx))]
            if is_max:
                y[r] = np.max(np.maximum.reduce(terms), axis=(2, 4))
            else:
                y[r] = np.sum(terms, axis=0).sum(axis=(2, 4)) / max(grid[0] * grid[1], 1)
        return y.astype(x.dtype)

    def infer(self, ctx):
        tx, tr = ctx.input_type(0), ctx.input_type(1)
        if tx is None:
            return None
        rois = tr.shape[0] if tr is not None and tr.shape else None
        c = tx.shape[1] if tx.shape else None
        return [TensorType(tx.dtype, (rois, c, ctx.attr("output_height", 1), ctx.attr("output_width", 1)))]


# -- Resize / Upsample ----------------------------------------------------------------------------------------


def _source_coords(mode: str, out_len: int, in_len: int, scale: float, roi) -> np.ndarray:
    """Input coordinates of the output positions of one axis (coordinate_transformation_mode ``mode``)."""
    y = np.arange(out_len, dtype=np.float64)
    out_width = scale * in_len  # the real-valued output length
    if mode == "asymmetric":
        return y / scale
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        # the spec's 0 for a single output (the reference has -0.5; they differ for cubic only)
        return (y + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if mode == "align_corners":
        return y * (in_len - 1) / (out_width - 1) if out_width != 1 else np.zeros(out_len)
    if mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_width)
        return offset + (y + 0.5) / scale - 0.5
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out_width == 1:
            return np.full(out_len, (end - start) * (in_len - 1) / 2 + start * (in_len - 1))
        return start * (in_len - 1) + y * (end - start) * (in_len - 1) / (out_width - 1)
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest_index(x: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(x)
    elif nearest_mode == "ceil":
        idx = np.ceil(x)
    else:
        raise ValueError(f"unknown nearest_mode {nearest_mode!r}")
    return idx.astype(np.int64)


def _filter_matrix(x: np.ndarray, in_len: int, mode: str, scale: float, cubic_a: float, antialias: bool,
                   exclude_outside: bool) -> np.ndarray:
    """(out, in) interpolation matrix of a linear or cubic resize at input coordinates x.

    Taps sit at ``base + i`` with ``base = ceil(x) - 1`` (so the fraction is in (0, 1]); antialiasing when
    downsampling stretches the filter by 1/scale and normalises it."""
    radius = 1 if mode == "linear" else 2
    stretch = min(scale, 1.0) if antialias else 1.0
    start = math.floor(-radius / stretch) + 1
    offsets = np.arange(start, 2 - start)
    base = np.ceil(x) - 1
    dist = (offsets[None, :] - (x - base)[:, None]) * stretch
    weights = np.maximum(1 - np.abs(dist), 0) if mode == "linear" else _cubic_kernel(dist, cubic_a)
    if antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    idx = base.astype(np.int64)[:, None] + offsets[None, :]
    if exclude_outside:
        weights = np.where((idx < 0) | (idx >= in_len), 0.0, weights)
        sums = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(sums == 0, 1.0, sums)
    matrix = np.zeros((len(x), in_len))
    rows = np.broadcast_to(np.arange(len(x))[:, None], idx.shape)
    np.add.at(matrix, (rows, np.clip(idx, 0, in_len - 1)), weights)
    return matrix


@dataclass
class _ResizeSpec:
    mode: str
    coord_mode: str
    nearest_mode: str
    cubic_a: float = -0.75
    exclude_outside: bool = False
    extrapolation: float = 0.0
    antialias: bool = False


def resize(x: np.ndarray, scales: list, sizes: list, roi: list | None, spec: _ResizeSpec) -> np.ndarray:
    """x resized to ``sizes`` (one per axis) with per-axis ``scales``; roi is [starts..., ends...] or None."""
    rank = x.ndim
    is_nearest = spec.mode == "nearest"
    y = x if is_nearest else x.astype(np.float64)
    for axis in range(rank):
        in_len, out_len, scale = x.shape[axis], sizes[axis], scales[axis]
        axis_roi = None if roi is None else (float(roi[axis]), float(roi[axis + rank]))
        if out_len == in_len and math.isclose(scale, 1.0) and (
                axis_roi is None or spec.coord_mode != "tf_crop_and_resize" or axis_roi == (0.0, 1.0)):
            continue
        coords = _source_coords(spec.coord_mode, out_len, in_len, scale, axis_roi)
        if is_nearest:
            idx = np.clip(_nearest_index(coords, spec.nearest_mode), 0, in_len - 1)
            y = np.take(y, idx, axis=axis)
        else:
            matrix = _filter_matrix(coords, in_len, spec.mode, scale, spec.cubic_a, spec.antialias,
                                    spec.exclude_outside)
            y = np.moveaxis(np.tensordot(y, matrix, axes=([axis], [1])), -1, axis)
        if spec.coord_mode == "tf_crop_and_resize":
            outside = ((coords < 0) | (coords > in_len - 1)).reshape((-1,) + (1,) * (rank - axis - 1))
            y = np.where(outside, np.asarray(spec.extrapolation, y.dtype), y)
    if y.dtype == x.dtype:
        return np.ascontiguousarray(y)
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.rint(y), info.min, info.max).astype(x.dtype)
    return y.astype(x.dtype)


def _resize_target(ctx: OpContext, shape: tuple, scales, sizes) -> tuple[list, list]:
    """(per-axis scales, per-axis output sizes) from a Resize's scales or sizes (given for ``axes`` only).

    ``shape`` may hold symbolic dims: those come back unchanged when their scale is 1, else None."""
    rank = len(shape)
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    full_scales, full_sizes = [1.0] * rank, list(shape)
    if sizes is not None and len(sizes):
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        ratios = {a: (s / shape[a] if isinstance(shape[a], int) and shape[a] else None) for a, s in zip(axes, sizes)}
        if policy != "stretch":
            if any(r is None for r in ratios.values()):
                return full_scales, [None if a in axes else d for a, d in enumerate(shape)]
            common = (min if policy == "not_larger" else max)(ratios.values())
            for a in axes:
                full_scales[a] = common
                full_sizes[a] = int(common * shape[a] + 0.5)
        else:
            for a, s in zip(axes, sizes):
                full_scales[a], full_sizes[a] = ratios[a], s
    else:
        for a, s in zip(axes, np.asarray(scales, np.float64).reshape(-1)):
            s = float(s)
            full_scales[a] = s
            if s != 1.0:
                full_sizes[a] = int(s * shape[a]) if isinstance(shape[a], int) else None
    return full_scales, full_sizes


def _nonempty(a):
    return None if a is None or np.asarray(a).size == 0 else a


@register
class Resize(OpDef):
    """Inputs: opset 10 (X, scales); 11+ (X, roi, scales, sizes), one of scales/sizes non-empty."""

    op_type = "Resize"
    fusion = FusionClass.OPAQUE  # linear/cubic read several inputs per output

    def _inputs(self, ctx, inputs):
        """(roi, scales, sizes) from the node's inputs, whatever the opset."""
        inputs = list(inputs) + [None] * 4
        if ctx.opset < 11:
            return None, inputs[1], None
        return _nonempty(inputs[1]), _nonempty(inputs[2]), _nonempty(inputs[3])

    def _spec(self, ctx, scales) -> _ResizeSpec:
        mode = ctx.attr("mode", "nearest")
        if ctx.opset < 11:  # Resize-10 behaves like Upsample: asymmetric; nearest floors (ceils when shrinking)
            shrinks = scales is not None and any(float(s) < 1 for s in np.asarray(scales).reshape(-1))
            return _ResizeSpec(mode, "asymmetric", "ceil" if shrinks else "floor")
        return _ResizeSpec(mode, ctx.attr("coordinate_transformation_mode", "half_pixel"),
                           ctx.attr("nearest_mode", "round_prefer_floor"), float(ctx.attr("cubic_coeff_a", -0.75)),
                           bool(ctx.attr("exclude_outside", 0)), float(ctx.attr("extrapolation_value", 0.0)),
                           bool(ctx.attr("antialias", 0)) and mode != "nearest")

    def compute(self, ctx, x, *rest):
        roi, scales, sizes = self._inputs(ctx, (x,) + rest)
        full_scales, full_sizes = _resize_target(ctx, x.shape, scales, sizes)
        rank = x.ndim
        if roi is not None:
            roi = [float(v) for v in np.asarray(roi).reshape(-1)]
            axes = ctx.attr("axes")
            if axes:  # roi lists starts then ends of the given axes only
                full = [0.0] * rank + [1.0] * rank
                for i, a in enumerate(axes):
                    full[a % rank], full[a % rank + rank] = roi[i], roi[i + len(axes)]
                roi = full
        return resize(x, full_scales, full_sizes, roi, self._spec(ctx, scales))

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        if tx.shape is None:
            return [TensorType(tx.dtype, None)]
        consts = [ctx.const(i) for i in range(ctx.num_inputs)]
        roi, scales, sizes = self._inputs(ctx, consts)
        present = [ctx.num_inputs > i and ctx.node.inputs[i] is not None for i in range(4)]
        # a non-constant scales/sizes input leaves the output shape unknown
        scales_idx, sizes_idx = (1, None) if ctx.opset < 11 else (2, 3)
        for idx, value in ((scales_idx, scales), (sizes_idx, sizes)):
            if idx is not None and present[idx] and value is None and ctx.const(idx) is None:
                t = ctx.input_type(idx)
                if t is None or t.shape is None or dims_product(t.shape) != 0:
                    return [TensorType(tx.dtype, (None,) * len(tx.shape))]
        if scales is None and sizes is None:
            return [TensorType(tx.dtype, (None,) * len(tx.shape))]
        _, out = _resize_target(ctx, tx.shape, scales, sizes)
        return [TensorType(tx.dtype, tuple(out))]


@register
class Upsample(OpDef):
    """Deprecated Resize: scales attribute (opset 7) or input (9); nearest floors, linear is asymmetric."""

    op_type = "Upsample"
    fusion = FusionClass.OPAQUE
    attrs = {"mode": "nearest"}

    def _scales(self, ctx, scales):
        return ctx.attr("scales") if ctx.opset < 9 else scales

    def compute(self, ctx, x, scales=None):
        scales = [float(s) for s in np.asarray(self._scales(ctx, scales)).reshape(-1)]
        sizes = [int(s * n) for s, n in zip(scales, x.shape)]
        mode = "linear" if ctx.attr("mode") in ("linear", "bilinear") else "nearest"
        return resize(x, scales, sizes, None, _ResizeSpec(mode, "asymmetric", "floor"))

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        scales = self._scales(ctx, ctx.const(1))
        if tx.shape is None or scales is None:
            return [TensorType(tx.dtype, None if tx.shape is None else (None,) * len(tx.shape))]
        out = [d if float(s) == 1.0 else (int(float(s) * d) if isinstance(d, int) else None)
               for s, d in zip(np.asarray(scales).reshape(-1), tx.shape)]
        return [TensorType(tx.dtype, tuple(out))]


# -- Dropout --------------------------------------------------------------------------------------------------


@register
class Dropout(OpDef):
    """Identity at inference. From opset 12 the ratio and training_mode are inputs; in training mode elements
    are kept where ``RandomState(seed).uniform(size) >= ratio`` and scaled by 1 / (1 - ratio). The mask is bool
    from opset 10, of the data's type before."""

    op_type = "Dropout"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, x, ratio=None, training_mode=None):
        if ctx.opset >= 12:
            ratio = 0.5 if ratio is None else float(ratio)
            training = training_mode is not None and bool(training_mode)
        else:
            ratio = ctx.attr("ratio", 0.5)
            training = ctx.opset < 7 and not ctx.attr("is_test", 0)
        mask_dtype = np.bool_ if ctx.opset >= 10 else x.dtype
        if not training or ratio == 0:
            return x, np.ones(x.shape, mask_dtype)
        keep = np.random.RandomState(ctx.attr("seed")).uniform(0, 1, x.shape) >= ratio
        y = (x * keep / (1 - ratio)).astype(x.dtype)
        return y, keep.astype(mask_dtype)

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        mask_dtype = np.dtype(np.bool_) if ctx.opset >= 10 else tx.dtype
        return [tx, TensorType(mask_dtype, tx.shape)][:max(ctx.num_outputs, 1)]
