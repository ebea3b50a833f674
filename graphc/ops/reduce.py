"""Ops: reductions (ReduceSum, ReduceMean, ReduceMax, ... ReduceSumSquare) and Softmax, LogSoftmax, Hardmax.

Reductions take their ``axes`` from an attribute before opset 13 (ReduceSum) or 18 (the others), and from an
optional second input after; from then on ``noop_with_empty_axes=1`` with no/empty axes returns the input
unchanged, otherwise no/empty axes means every axis. A reduction over zero elements yields the reduction's
identity (0 for sums, 1 for products, -inf / the smallest integer for max, -inf for the log-sums...), which
numpy's max/min refuse to produce by themselves.

Softmax-family axis semantics changed at opset 13: before, the input is coerced to 2-D at ``axis`` (the op acts
on all trailing axes from ``axis`` on, flattened); from 13 on it acts on the single axis ``axis``. Softmax of
float16 is computed in float16, as ONNX's reference does: float32 differs by an ulp here and there, enough to
fail the conformance tolerance; only the ml_dtypes floats (bfloat16...) are computed in float32.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .linalg import compute_dtype
from .registry import ByOpset, Cost, FusionClass, OpContext, OpDef, normalize_axes, normalize_axis, register

# -- reductions -----------------------------------------------------------------------------------------------


def _max_identity(dtype: np.dtype):
    if dtype == np.bool_:
        return False
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


def _min_identity(dtype: np.dtype):
    if dtype == np.bool_:
        return True
    return np.iinfo(dtype).max if dtype.kind in "iu" else np.inf


def _log_sum_exp(x, axes, keepdims):
    if x.size == 0:  # log(0) = -inf; avoids max over an empty set below
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # all -inf (or inf) slices: let exp produce the right 0 / inf
    s = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return s if keepdims else np.squeeze(s, axis=axes)


def _extreme(ufunc, identity):
    def reduce(x, axes, keepdims):
        if x.size == 0:  # numpy has no identity for max/min: supply it
            return ufunc.reduce(x, axis=axes, keepdims=keepdims, initial=identity(x.dtype))
        return ufunc.reduce(x, axis=axes, keepdims=keepdims)
    return reduce


class _Reduce(OpDef):
    """Base of the Reduce* ops: ``fn(x, axes, keepdims)`` reduces the input converted to its compute dtype."""

    fusion = FusionClass.REDUCTION
    #: first opset whose axes arrive as an input instead of an attribute
    axes_input_since = 18
    attrs = {"keepdims": 1, "noop_with_empty_axes": 0}

    @staticmethod
    def fn(x: np.ndarray, axes: tuple, keepdims: bool) -> np.ndarray:
        raise NotImplementedError

    def _axes(self, ctx: OpContext, axes_input) -> list[int] | None:
        """The axes to reduce: a list (empty = noop), None = all axes; raises LookupError when not known."""
        if ctx.opset < self.axes_input_since:
            axes = ctx.attrs.get("axes")
            return None if not axes else list(axes)
        if axes_input is None:
            if ctx.num_inputs > 1 and ctx.node.inputs[1] is not None:
                raise LookupError("axes not constant")
            axes = []
        else:
            axes = [int(a) for a in np.asarray(axes_input).reshape(-1)]
        if not axes:
            return [] if ctx.attr("noop_with_empty_axes") else None
        return axes

    def compute(self, ctx, x, axes=None):
        axes = self._axes(ctx, axes)
        if axes == []:
            return x
        axes = tuple(range(x.ndim)) if axes is None else tuple(sorted(set(normalize_axes(axes, x.ndim, ctx.fail))))
        with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer for the log-sums
            y = self.fn(x.astype(compute_dtype(x.dtype), copy=False), axes, bool(ctx.attr("keepdims")))
        return np.asarray(y).astype(x.dtype, copy=False)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        keepdims = bool(ctx.attr("keepdims"))
        try:
            axes = self._axes(ctx, ctx.const(1))
        except LookupError:  # axes computed at run time: only the rank is known, and only with keepdims
            rank = None if t.shape is None or not keepdims else len(t.shape)
            return [TensorType(t.dtype, None if rank is None else (None,) * rank)]
        if t.shape is None:
            return [TensorType(t.dtype, None)]
        if axes == []:
            return [t]
        rank = len(t.shape)
        axes = set(range(rank)) if axes is None else set(normalize_axes(axes, rank, ctx.shape_error))
        shape = tuple((1 if keepdims else None) if i in axes else d for i, d in enumerate(t.shape))
        return [TensorType(t.dtype, tuple(d for i, d in enumerate(shape) if keepdims or i not in axes))]

    def cost(self, ctx):
        """One operation per input element."""
        t = ctx.input_type(0)
        n = (t.numel() or 0) if t is not None else 0
        base = super().cost(ctx)
        return Cost(n, base.bytes_read, base.bytes_written)


def _reduce_op(op_type: str, fn, axes_input_since: int = 18) -> type[OpDef]:
    cls = type(op_type, (_Reduce,), {"op_type": op_type, "fn": staticmethod(fn),
                                      "axes_input_since": axes_input_since, "__module__": __name__})
    return register(cls)


def _mean(x, axes, keepdims):
    if x.dtype.kind in "iu":  # ONNX truncates the float mean of integers
        return np.mean(x, axis=axes, keepdims=keepdims, dtype=np.float64)
    return np.mean(x, axis=axes, keepdims=keepdims)


_reduce_op("ReduceSum", lambda x, a, k: np.sum(x, axis=a, keepdims=k), axes_input_since=13)
_reduce_op("ReduceMean", _mean)
_reduce_op("ReduceMax", _extreme(np.maximum, _max_identity))
_reduce_op("ReduceMin", _extreme(np.minimum, _min_identity))
_reduce_op("ReduceProd", lambda x, a, k: np.prod(x, axis=a, keepdims=k))
_reduce_op("ReduceL1", lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k))
_reduce_op("ReduceL2", lambda x, a, k: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k)))
_reduce_op("ReduceSumSquare", lambda x, a, k: np.sum(np.square(x), axis=a, keepdims=k))
_reduce_op("ReduceLogSum", lambda x, a, k: np.log(np.sum(x, axis=a, keepdims=k)))
_reduce_op("ReduceLogSumExp", _log_sum_exp)


# -- Softmax, LogSoftmax, Hardmax -----------------------------------------------------------------------------


def softmax_axes(ctx: OpContext, ndim: int) -> tuple[int, ...]:
    """The axes the softmax family normalises over: ``axis`` (opset >= 13) or ``axis`` and all after it."""
    axis = normalize_axis(ctx.attr("axis"), max(ndim, 1), ctx.fail)
    return (axis,) if ctx.opset >= 13 else tuple(range(axis, ndim))


def softmax(x: np.ndarray, axes, log: bool = False) -> np.ndarray:
    """Numerically stable (log-)softmax over ``axes``, in x's dtype (float32 for the ml_dtypes floats)."""
    dtype = x.dtype
    if dtype.kind == "V":
        x = x.astype(np.float32)
    m = np.max(x, axis=axes, keepdims=True)
    e = x - np.where(np.isfinite(m), m, 0)
    if log:
        y = e - np.log(np.sum(np.exp(e), axis=axes, keepdims=True))
    else:
        e = np.exp(e)
        y = e / np.sum(e, axis=axes, keepdims=True)
    return y.astype(dtype, copy=False)


class _SoftmaxFamily(OpDef):
    fusion = FusionClass.REDUCTION
    attrs = {"axis": ByOpset({1: 1, 13: -1})}
    flops_per_element = 5  # max, subtract, exp, sum, divide

    def infer(self, ctx):
        t = ctx.input_type(0)
        return None if t is None else [t]


@register
class Softmax(_SoftmaxFamily):
    op_type = "Softmax"

    def compute(self, ctx, x):
        return softmax(x, softmax_axes(ctx, x.ndim))


@register
class LogSoftmax(_SoftmaxFamily):
    op_type = "LogSoftmax"

    def compute(self, ctx, x):
        return softmax(x, softmax_axes(ctx, x.ndim), log=True)


@register
class Hardmax(_SoftmaxFamily):
    """1 at the first maximum along the normalised axes, 0 elsewhere."""

    op_type = "Hardmax"
    flops_per_element = 1

    def compute(self, ctx, x):
        axes = softmax_axes(ctx, x.ndim)
        if x.ndim == 0:
            return np.ones_like(x)
        # flatten the normalised axes (contiguous and trailing before opset 13) into the last one
        moved = np.moveaxis(x, axes[0], -1) if len(axes) == 1 else x.reshape(x.shape[:axes[0]] + (-1,))
        y = np.zeros_like(moved)
        if moved.shape[-1]:
            np.put_along_axis(y, np.argmax(moved, axis=-1)[..., None], 1, axis=-1)
        return np.moveaxis(y, -1, axes[0]) if len(axes) == 1 else y.reshape(x.shape)
