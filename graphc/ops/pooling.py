"""Ops: pooling — MaxPool, AveragePool, LpPool, their Global* forms, MaxUnpool, MaxRoiPool.

The window geometry (auto_pad, pads, strides, dilations, ceil_mode) comes from :func:`nn.window_geometry`.
Windowed pools loop over the kernel taps and combine one strided view of the padded input per tap
(:func:`nn.window_taps`): prod(kernel) vectorised operations over the whole output, no window copies.

Ceil mode may add windows that run past the declared end pads; those extra positions never count:
AveragePool divides by the number of input positions in the window (``count_include_pad=0``) or of input and
declared pad positions (``count_include_pad=1``), computed by pooling a mask the same way.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir.types import TensorType
from .linalg import dims_product, upcast
from .nn import io_bytes, output_shape, pad_spatial, padded_input, window_geometry, window_infer, window_taps
from .registry import REQUIRED, Cost, FusionClass, OpDef, register


def _lowest(dtype: np.dtype):
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


class _WindowPool(OpDef):
    """Shape rule and cost of the windowed pools: output elements * kernel size."""

    fusion = FusionClass.REDUCTION

    def _win(self, ctx, x):
        return window_geometry(ctx, x.shape[2:], ctx.attr("kernel_shape"), ceil_mode=bool(ctx.attr("ceil_mode", 0)))

    def infer(self, ctx):
        tx = ctx.input_type(0)
        channels = tx.shape[1] if tx is not None and tx.shape else None
        types = window_infer(ctx, channels, ctx.attr("kernel_shape"), ceil_mode=bool(ctx.attr("ceil_mode", 0)))
        if types and ctx.num_outputs > 1:  # MaxPool's Indices
            types.append(TensorType(np.int64, types[0].shape))
        return types

    def cost(self, ctx):
        read, written = io_bytes(ctx)
        out = output_shape(ctx, self)
        n_out = dims_product(out) if out is not None else None
        flops = n_out * math.prod(ctx.attr("kernel_shape")) if n_out is not None else 0
        return Cost(flops, read, written)


def _window_sum(xp: np.ndarray, win) -> np.ndarray:
    total = None
    for _, view in window_taps(xp, win):
        total = view.copy() if total is None else np.add(total, view, out=total)
    return total


def _window_count(ctx, x_shape, win, include_pad: bool) -> np.ndarray | float:
    """How many positions of each window count for an average: input positions, plus the declared pads when
    ``include_pad`` (positions added by ceil mode never count). A scalar when every window is full."""
    in_sizes = x_shape[2:]
    padded_end = win.padded_end(in_sizes)
    if padded_end == win.end and (include_pad or (not any(win.begin) and not any(win.end))):
        return float(math.prod(win.kernel))
    mask = np.ones((1, 1) + tuple(in_sizes), np.float64)
    if include_pad:
        mask = pad_spatial(mask, win.begin, win.end, 1.0)
        mask = pad_spatial(mask, [0] * len(in_sizes), [p - e for p, e in zip(padded_end, win.end)], 0.0)
    else:
        mask = pad_spatial(mask, win.begin, padded_end, 0.0)
    return _window_sum(mask, win)


@register
class MaxPool(_WindowPool):
    """Outputs the max of each window and, optionally, its flat index into x (row-major over N, C and the
    spatial axes; ``storage_order=1`` makes the spatial part column-major). Ties keep the first window tap."""

    op_type = "MaxPool"
    attrs = {"kernel_shape": REQUIRED, "auto_pad": "NOTSET", "storage_order": 0}

    def compute(self, ctx, x):
        win = self._win(ctx, x)
        xp = padded_input(x, win, _lowest(x.dtype))
        want_indices = ctx.num_outputs > 1 and ctx.node.outputs[1] is not None
        y = best = None
        for i, (_, view) in enumerate(window_taps(xp, win)):
            if y is None:
                y = view.copy()
                best = np.zeros(y.shape, np.int64) if want_indices else None
            elif want_indices:
                better = view > y
                np.copyto(y, view, where=better)
                best[better] = i
            else:
                np.maximum(y, view, out=y)
        if not want_indices:
            return y
        return y, self._indices(ctx, x.shape, win, best)

    @staticmethod
    def _indices(ctx, x_shape, win, best: np.ndarray) -> np.ndarray:
        nd = len(win.kernel)
        in_sizes = x_shape[2:]
        taps = np.unravel_index(best, win.kernel)
        # strides of the spatial axes in the flat index
        order = range(nd) if ctx.attr("storage_order") == 0 else reversed(range(nd))
        step, strides = 1, [0] * nd
        for axis in reversed(list(order)):
            strides[axis] = step
            step *= in_sizes[axis]
        flat = np.zeros(best.shape, np.int64)
        for axis in range(nd):
            start = (np.arange(win.out[axis]) * win.strides[axis] - win.begin[axis]).reshape(
                (-1,) + (1,) * (nd - 1 - axis))
            flat += (start + taps[axis] * win.dilations[axis]) * strides[axis]
        n, c = x_shape[:2]
        channel = (np.arange(n * c, dtype=np.int64) * math.prod(in_sizes)).reshape((n, c) + (1,) * nd)
        return flat + channel


@register
class AveragePool(_WindowPool):
    op_type = "AveragePool"
    attrs = {"kernel_shape": REQUIRED, "auto_pad": "NOTSET", "count_include_pad": 0}

    def compute(self, ctx, x):
        win = self._win(ctx, x)
        (cx,) = upcast(x)
        total = _window_sum(padded_input(cx, win, 0), win)
        count = _window_count(ctx, x.shape, win, bool(ctx.attr("count_include_pad")))
        return (total / np.asarray(count, total.dtype)).astype(x.dtype, copy=False)


@register
class LpPool(_WindowPool):
    """(sum over the window of |x|^p)^(1/p); pads contribute 0."""

    op_type = "LpPool"
    attrs = {"kernel_shape": REQUIRED, "auto_pad": "NOTSET", "p": 2}

    def compute(self, ctx, x):
        win = self._win(ctx, x)
        p = float(ctx.attr("p"))
        (cx,) = upcast(x)
        total = _window_sum(padded_input(np.abs(cx) ** p, win, 0), win)
        return (total ** (1.0 / p)).astype(x.dtype, copy=False)


# -- global pools ---------------------------------------------------------------------------------------------


class _GlobalPool(OpDef):
    """Reduces all spatial axes, keeping them as 1s."""

    fusion = FusionClass.REDUCTION

    def reduce(self, ctx, x: np.ndarray, axes: tuple) -> np.ndarray:
        raise NotImplementedError

    def compute(self, ctx, x):
        (cx,) = upcast(x)
        y = self.reduce(ctx, cx, tuple(range(2, x.ndim)))
        return np.asarray(y).astype(x.dtype, copy=False)

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        shape = None if tx.shape is None else tuple(tx.shape[:2]) + (1,) * (len(tx.shape) - 2)
        return [TensorType(tx.dtype, shape)]

    def cost(self, ctx):
        read, written = io_bytes(ctx)
        tx = ctx.input_type(0)
        return Cost((tx.numel() or 0) if tx is not None else 0, read, written)


@register
class GlobalAveragePool(_GlobalPool):
    op_type = "GlobalAveragePool"

    def reduce(self, ctx, x, axes):
        return np.mean(x, axis=axes, keepdims=True)


@register
class GlobalMaxPool(_GlobalPool):
    op_type = "GlobalMaxPool"

    def reduce(self, ctx, x, axes):
        return np.max(x, axis=axes, keepdims=True)


@register
class GlobalLpPool(_GlobalPool):
    op_type = "GlobalLpPool"
    attrs = {"p": 2}

    def reduce(self, ctx, x, axes):
        p = float(ctx.attr("p"))
        return np.sum(np.abs(x) ** p, axis=axes, keepdims=True) ** (1.0 / p)


# -- MaxUnpool, MaxRoiPool ------------------------------------------------------------------------------------


def _unpool_shape(ctx, in_shape) -> tuple:
    """The shape MaxUnpool's indices refer to: (in - 1) * stride - pads + kernel per spatial axis."""
    kernel = ctx.attr("kernel_shape")
    nd = len(kernel)
    strides = ctx.attr("strides") or [1] * nd
    pads = ctx.attr("pads") or [0] * (2 * nd)
    spatial = tuple((n - 1) * s - (pads[i] + pads[i + nd]) + k if isinstance(n, int) else None
                    for i, (n, s, k) in enumerate(zip(in_shape[2:], strides, kernel)))
    return tuple(in_shape[:2]) + spatial


@register
class MaxUnpool(OpDef):
    """Scatters x to the flat positions ``indices`` (MaxPool's) of a zero tensor of the pooled input's shape;
    an ``output_shape`` input enlarges that tensor with zeros at the end of each axis."""

    op_type = "MaxUnpool"
    fusion = FusionClass.OPAQUE
    attrs = {"kernel_shape": REQUIRED}

    def compute(self, ctx, x, indices, out_shape=None):
        shape = _unpool_shape(ctx, x.shape)
        y = np.zeros(math.prod(shape), x.dtype)
        flat = indices.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= y.size):
            raise ctx.fail(f"index out of range for an output of shape {shape}")
        y[flat] = x.reshape(-1)
        y = y.reshape(shape)
        if out_shape is None:
            return y
        out = np.zeros(tuple(int(d) for d in out_shape), x.dtype)
        out[tuple(slice(0, d) for d in shape)] = y
        return out

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        if ctx.num_inputs > 2 and ctx.node.inputs[2] is not None:
            shape = ctx.const(2)
            return [TensorType(tx.dtype, None if shape is None else tuple(int(d) for d in shape))]
        return [TensorType(tx.dtype, None if tx.shape is None else _unpool_shape(ctx, tx.shape))]


@register
class MaxRoiPool(OpDef):
    """Max over each of pooled_shape bins of each roi (batch, x1, y1, x2, y2), Caffe-style: the roi's corners
    are rounded after ``spatial_scale``, bin edges floored/ceiled; empty bins give 0."""

    op_type = "MaxRoiPool"
    fusion = FusionClass.OPAQUE
    attrs = {"pooled_shape": REQUIRED, "spatial_scale": 1.0}

    def compute(self, ctx, x, rois):
        ph, pw = ctx.attr("pooled_shape")
        scale = ctx.attr("spatial_scale")
        height, width = x.shape[2:]
        y = np.zeros((len(rois), x.shape[1], ph, pw), x.dtype)
        for r, roi in enumerate(rois):
            x1, y1, x2, y2 = (int(np.round(v * scale)) for v in roi[1:5])
            bin_h, bin_w = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
            img = x[int(roi[0])]
            for i in range(ph):
                h0 = min(max(int(np.floor(i * bin_h)) + y1, 0), height)
                h1 = min(max(int(np.ceil((i + 1) * bin_h)) + y1, 0), height)
                for j in range(pw):
                    w0 = min(max(int(np.floor(j * bin_w)) + x1, 0), width)
                    w1 = min(max(int(np.ceil((j + 1) * bin_w)) + x1, 0), width)
                    if h1 > h0 and w1 > w0:
                        y[r, :, i, j] = img[:, h0:h1, w0:w1].max(axis=(1, 2))
        return y

    def infer(self, ctx):
        tx, tr = ctx.input_type(0), ctx.input_type(1)
        if tx is None:
            return None
        rois = tr.shape[0] if tr is not None and tr.shape else None
        c = tx.shape[1] if tx.shape else None
        return [TensorType(tx.dtype, (rois, c) + tuple(ctx.attr("pooled_shape")))]
