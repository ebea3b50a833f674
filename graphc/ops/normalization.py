"""Ops: normalization — BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
RMSNormalization, LRN, LpNormalization, MeanVarianceNormalization.

Statistics are computed in float32 at least (float64 stays float64): ``stash_type=1`` (the default) asks for
float32 statistics, and narrower floats would lose too much in the sums. Variances are population variances.

Per-channel parameters (scale, bias, mean, var) of the NC... ops apply along axis 1; BatchNormalization before
opset 9 with ``spatial=0`` has per-activation parameters of shape x.shape[1:] instead.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .linalg import compute_dtype, upcast
from .registry import FusionClass, OpDef, register


def _channel_param(p: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel parameter shaped to broadcast along axis 1 of a rank-``rank`` tensor."""
    if p.ndim == 1:
        return p.reshape((-1,) + (1,) * (rank - 2))
    return p  # per-activation (C, *spatial): already aligned with x.shape[1:]


def _normalize(x: np.ndarray, axes: tuple, epsilon: float):
    """(x - mean) * inv_std over ``axes``, with the mean and inv_std (keepdims)."""
    mean = np.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + np.asarray(epsilon, x.dtype))
    return centered * inv_std, mean, inv_std


def _stash(x: np.ndarray, stash_type: int | None = 1) -> np.ndarray:
    """x in the precision statistics are computed in: float32 for stash_type 1 (never narrower than x's
    compute dtype)."""
    dtype = compute_dtype(x.dtype)
    if stash_type == 1 and dtype.itemsize < 4:
        dtype = np.dtype(np.float32)
    return x.astype(dtype, copy=False)


class _SameShape(OpDef):
    """Normalizations whose first output has x's type."""

    fusion = FusionClass.REDUCTION
    flops_per_element = 5.0

    def infer(self, ctx):
        tx = ctx.input_type(0)
        return None if tx is None else [tx]


@register
class BatchNormalization(_SameShape):
    """Inference: y = (x - mean) / sqrt(var + eps) * scale + B. Training (``training_mode=1`` from opset 14; extra
    outputs before): normalises with the batch statistics over every axis but 1 and also outputs the running
    statistics ``mean * momentum + batch_mean * (1 - momentum)`` (and, before 14, the saved batch mean and
    inverse standard deviation)."""

    op_type = "BatchNormalization"
    flops_per_element = 2.0  # folds into one multiply-add
    attrs = {"epsilon": 1e-5, "momentum": 0.9}

    def _training(self, ctx) -> bool:
        if ctx.opset >= 14:
            return bool(ctx.attr("training_mode", 0))
        return ctx.num_outputs > 1 and not ctx.attr("is_test", 0)

    def compute(self, ctx, x, scale, bias, mean, var):
        eps = ctx.attr("epsilon")
        cx, cs, cb, cm, cv = upcast(x, scale, bias, mean, var)
        rank = x.ndim
        if not self._training(ctx):
            inv = cs / np.sqrt(cv + np.asarray(eps, cv.dtype))
            y = cx * _channel_param(inv, rank) + _channel_param(cb - cm * inv, rank)
            return y.astype(x.dtype, copy=False)
        axes = (0,) + tuple(range(2, rank))
        normed, batch_mean, inv_std = _normalize(cx, axes, eps)
        y = (normed * _channel_param(cs, rank) + _channel_param(cb, rank)).astype(x.dtype, copy=False)
        batch_mean = batch_mean.reshape(-1)
        batch_var = np.var(cx, axis=axes)
        momentum = ctx.attr("momentum")
        running_mean = (cm * momentum + batch_mean * (1 - momentum)).astype(mean.dtype)
        running_var = (cv * momentum + batch_var * (1 - momentum)).astype(var.dtype)
        outs = [y, running_mean, running_var]
        if ctx.opset < 14:
            outs += [batch_mean.astype(mean.dtype), inv_std.reshape(-1).astype(var.dtype)]
        return outs[:max(ctx.num_outputs, 1)]

    def infer(self, ctx):
        tx, tm, tv = ctx.input_type(0), ctx.input_type(3), ctx.input_type(4)
        if tx is None:
            return None
        types = [tx]
        for stat in (tm, tv, tm, tv)[:ctx.num_outputs - 1]:
            types.append(stat)
        return types


@register
class InstanceNormalization(_SameShape):
    """Normalises each (n, c) over the spatial axes, then scale[c] and B[c]."""

    op_type = "InstanceNormalization"
    attrs = {"epsilon": 1e-5}

    def compute(self, ctx, x, scale, bias):
        cx = _stash(x)
        normed, _, _ = _normalize(cx, tuple(range(2, x.ndim)), ctx.attr("epsilon"))
        y = normed * _channel_param(scale.astype(cx.dtype), x.ndim) + _channel_param(bias.astype(cx.dtype), x.ndim)
        return y.astype(x.dtype, copy=False)


@register
class LayerNormalization(_SameShape):
    """Normalises over the axes from ``axis`` on, then * Scale + B (broadcast). Optional outputs Mean and
    InvStdDev have x's leading dims and 1s for the normalised axes, in the stash precision (float32)."""

    op_type = "LayerNormalization"
    attrs = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def compute(self, ctx, x, scale, bias=None):
        axis = ctx.attr("axis") % x.ndim
        cx = _stash(x, ctx.attr("stash_type"))
        normed, mean, inv_std = _normalize(cx, tuple(range(axis, x.ndim)), ctx.attr("epsilon"))
        y = normed * scale.astype(cx.dtype)
        if bias is not None:
            y = y + bias.astype(cx.dtype)
        stat_dtype = self._stat_dtype(x.dtype, ctx.attr("stash_type"))
        return y.astype(x.dtype, copy=False), mean.astype(stat_dtype), inv_std.astype(stat_dtype)

    @staticmethod
    def _stat_dtype(dtype, stash_type) -> np.dtype:
        return np.dtype(np.float32) if stash_type == 1 and np.dtype(dtype).itemsize < 4 else np.dtype(dtype)

    def infer(self, ctx):
        tx = ctx.input_type(0)
        if tx is None:
            return None
        stat_shape = None
        if tx.shape is not None:
            axis = ctx.attr("axis") % len(tx.shape)
            stat_shape = tuple(tx.shape[:axis]) + (1,) * (len(tx.shape) - axis)
        stat = TensorType(self._stat_dtype(tx.dtype, ctx.attr("stash_type")) if tx.dtype is not None else None,
                          stat_shape)
        return [tx, stat, stat][:max(ctx.num_outputs, 1)]


@register
class GroupNormalization(_SameShape):
    """Normalises each (n, group) over its C/num_groups channels and the spatial axes. Scale and bias are per
    channel from opset 21, per group (shared by the group's channels) in opset 18."""

    op_type = "GroupNormalization"
    attrs = {"epsilon": 1e-5, "stash_type": 1}

    def compute(self, ctx, x, scale, bias):
        groups = ctx.attr("num_groups")
        n, c = x.shape[:2]
        cx = _stash(x, ctx.attr("stash_type"))
        grouped = cx.reshape((n, groups, -1))
        normed, _, _ = _normalize(grouped, (2,), ctx.attr("epsilon"))
        if ctx.opset < 21:  # per-group parameters: spread to the group's channels
            scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
        y = normed.reshape(x.shape) * _channel_param(scale.astype(cx.dtype), x.ndim)
        y = y + _channel_param(bias.astype(cx.dtype), x.ndim)
        return y.astype(x.dtype, copy=False)


@register
class RMSNormalization(_SameShape):
    """y = x / sqrt(mean(x^2 over the axes from ``axis`` on) + epsilon) * scale."""

    op_type = "RMSNormalization"
    attrs = {"axis": -1, "epsilon": 1e-5, "stash_type": 1}

    def compute(self, ctx, x, scale):
        axis = ctx.attr("axis") % x.ndim
        cx = _stash(x, ctx.attr("stash_type"))
        ms = np.mean(cx * cx, axis=tuple(range(axis, x.ndim)), keepdims=True)
        y = cx / np.sqrt(ms + np.asarray(ctx.attr("epsilon"), cx.dtype)) * scale.astype(cx.dtype)
        return y.astype(x.dtype, copy=False)


@register
class LRN(_SameShape):
    """Local response normalisation across channels: y = x / (bias + alpha / size * sum of x^2 over channels
    [c - floor((size-1)/2), c + ceil((size-1)/2)])^beta."""

    op_type = "LRN"
    attrs = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0}

    def compute(self, ctx, x):
        size = ctx.attr("size")
        (cx,) = upcast(x)
        sq = cx * cx
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        # window sums along axis 1 by a cumulative sum of the zero-padded squares
        widths = [(0, 0)] * x.ndim
        widths[1] = (before + 1, after)
        csum = np.cumsum(np.pad(sq, widths), axis=1)
        c = x.shape[1]
        window = np.take(csum, np.arange(size, size + c), axis=1) - np.take(csum, np.arange(c), axis=1)
        denom = (ctx.attr("bias") + ctx.attr("alpha") / size * window) ** ctx.attr("beta")
        return (cx / denom).astype(x.dtype, copy=False)


@register
class LpNormalization(_SameShape):
    """x / ||x||_p along ``axis``; 0 where the norm is 0."""

    op_type = "LpNormalization"
    attrs = {"axis": -1, "p": 2}

    def compute(self, ctx, x):
        (cx,) = upcast(x)
        p, axis = ctx.attr("p"), ctx.attr("axis")
        norm = np.sum(np.abs(cx) ** p, axis=axis, keepdims=True) ** (1.0 / p) if p != 2 else \
            np.sqrt(np.sum(cx * cx, axis=axis, keepdims=True))
        safe = np.where(norm == 0, 1, norm)
        return np.where(norm == 0, 0, cx / safe).astype(x.dtype, copy=False)


@register
class MeanVarianceNormalization(_SameShape):
    """(x - mean) / sqrt(var) over ``axes`` (default N and the spatial axes of NCHW)."""

    op_type = "MeanVarianceNormalization"
    attrs = {"axes": [0, 2, 3]}

    def compute(self, ctx, x):
        (cx,) = upcast(x)
        normed, _, _ = _normalize(cx, tuple(ctx.attr("axes")), 0.0)
        return normed.astype(x.dtype, copy=False)
