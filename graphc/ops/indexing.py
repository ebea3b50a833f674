"""Ops: indexing — gathers, scatters, selections, searches and scans along an axis.

Gather, GatherElements, GatherND, Scatter, ScatterElements, ScatterND, TensorScatter, OneHot, NonZero, Unique,
TopK, Compress, CumSum, CumProd, ArgMax, ArgMin.

Index inputs may be negative (counting from the end of their axis); :func:`checked_indices` wraps them and turns
out-of-range indices into an ExecutionError naming the node, since numpy would either raise an IndexError without
context or, for negative indices below -dim, silently read the wrong element.

The scatters' ``reduction`` attribute (none/add/mul at opset 16, max/min at 18) maps to numpy ufuncs applied
with ``ufunc.at``, which, unlike fancy-index assignment, combines every update of a duplicated index.
"""

from __future__ import annotations

import numpy as np

from ..ir.types import TensorType
from .registry import FusionClass, OpContext, OpDef, register
from .tensor import UNKNOWN_VALUE, input_elements_cost, moved_operand, normalize_axis, same_type, scalar


def checked_indices(ctx: OpContext, indices: np.ndarray, dim, what: str = "index") -> np.ndarray:
    """``indices`` as int64 with negative entries wrapped, failing when any lies outside [-dim, dim).

    ``dim`` may be an int or an array broadcasting against ``indices`` (one bound per index component).
    """
    indices = np.asarray(indices).astype(np.int64, copy=False)
    dim = np.asarray(dim, dtype=np.int64)
    bad = (indices < -dim) | (indices >= dim)
    if bad.any():
        first = indices[bad].reshape(-1)[0]
        raise ctx.fail(f"{what} {first} is out of range (dims {dim.tolist()})")
    return np.where(indices < 0, indices + dim, indices)


def _axis(ctx: OpContext, rank: int, fail=None, default: int = 0) -> int:
    return normalize_axis(int(ctx.attr("axis", default)), rank, fail or ctx.fail)


# -- gathers ----------------------------------------------------------------------------------------------------


@register
class Gather(OpDef):
    op_type = "Gather"
    fusion = FusionClass.INJECTIVE
    attrs = {"axis": 0}

    def compute(self, ctx, data, indices):
        axis = _axis(ctx, data.ndim)
        return np.take(data, checked_indices(ctx, indices, data.shape[axis]), axis=axis)

    def infer(self, ctx):
        t, ti = ctx.input_type(0), ctx.input_type(1)
        if t is None:
            return None
        if t.shape is None or ti is None or ti.shape is None:
            return [TensorType(t.dtype, None)]
        axis = _axis(ctx, len(t.shape), ctx.shape_error)
        return [TensorType(t.dtype, t.shape[:axis] + ti.shape + t.shape[axis + 1:])]


@register
class GatherElements(OpDef):
    op_type = "GatherElements"
    fusion = FusionClass.INJECTIVE
    attrs = {"axis": 0}

    def compute(self, ctx, data, indices):
        axis = _axis(ctx, data.ndim)
        if indices.ndim != data.ndim:
            raise ctx.fail(f"indices of rank {indices.ndim} for data of rank {data.ndim}")
        return np.take_along_axis(data, checked_indices(ctx, indices, data.shape[axis]), axis=axis)

    def infer(self, ctx):
        t, ti = ctx.input_type(0), ctx.input_type(1)
        return [TensorType(t.dtype if t else None, ti.shape if ti else None)]


def _gather_nd_index(ctx: OpContext, data_shape: tuple, indices: np.ndarray, batch_dims: int) -> tuple:
    """GatherND/ScatterND's index into ``data`` reshaped to (batch, *data_shape[batch_dims:]): a tuple of arrays
    of shape (batch, *indices.shape[batch_dims:-1]) (checked, negatives wrapped)."""
    k = indices.shape[-1]
    if k > len(data_shape) - batch_dims:
        raise ctx.fail(f"index tuples of length {k} for data of shape {data_shape} with batch_dims={batch_dims}")
    batch = int(np.prod(data_shape[:batch_dims], dtype=np.int64))
    idx = indices.reshape(batch, -1, k)
    idx = checked_indices(ctx, idx, np.array(data_shape[batch_dims:batch_dims + k]))
    rows = np.arange(batch).reshape(batch, 1)
    return (rows,) + tuple(idx[..., j] for j in range(k))


@register
class GatherND(OpDef):
    op_type = "GatherND"
    fusion = FusionClass.INJECTIVE
    attrs = {"batch_dims": 0}

    def compute(self, ctx, data, indices):
        b = int(ctx.attr("batch_dims"))
        if data.shape[:b] != indices.shape[:b]:
            raise ctx.fail(f"the first {b} dims of data {data.shape} and indices {indices.shape} differ")
        k = indices.shape[-1]
        flat = data.reshape((-1,) + data.shape[b:])
        out = flat[_gather_nd_index(ctx, data.shape, indices, b)]
        return out.reshape(indices.shape[:-1] + data.shape[b + k:])

    def infer(self, ctx):
        t, ti = ctx.input_type(0), ctx.input_type(1)
        if t is None:
            return None
        if t.shape is None or ti is None or ti.shape is None or not isinstance(ti.shape[-1], int):
            return [TensorType(t.dtype, None)]
        b, k = int(ctx.attr("batch_dims")), ti.shape[-1]
        return [TensorType(t.dtype, ti.shape[:-1] + t.shape[b + k:])]


# -- scatters ---------------------------------------------------------------------------------------------------

_REDUCTIONS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(ctx: OpContext, data: np.ndarray, index: tuple, updates: np.ndarray) -> np.ndarray:
    """A copy of ``data`` with ``updates`` written (or combined, per ``reduction``) at ``index``."""
    out = data.copy()
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        out[index] = updates
    elif reduction in _REDUCTIONS:
        _REDUCTIONS[reduction].at(out, index, updates)
    else:
        raise ctx.shape_error(f"unknown reduction {reduction!r}")
    return out


class _ScatterOp(OpDef):
    """Shared by the scatters: the output has the data's type; FLOPs count one per update when reducing."""

    fusion = FusionClass.OPAQUE

    def infer(self, ctx):
        return same_type(ctx)

    def cost(self, ctx):
        reduces = ctx.attr("reduction", "none") != "none"
        return input_elements_cost(ctx, 1.0 if reduces else 0.0, index=2)


class _ScatterElementsBase(_ScatterOp):
    attrs = {"axis": 0}

    def compute(self, ctx, data, indices, updates):
        axis = _axis(ctx, data.ndim)
        if indices.shape != updates.shape or indices.ndim != data.ndim:
            raise ctx.fail(f"indices {indices.shape} and updates {updates.shape} must match, of data's rank")
        index = list(np.indices(indices.shape, sparse=True))
        index[axis] = checked_indices(ctx, indices, data.shape[axis])
        return _scatter(ctx, data, tuple(index), updates)


@register
class ScatterElements(_ScatterElementsBase):
    op_type = "ScatterElements"


@register
class Scatter(_ScatterElementsBase):
    """The opset 9 name of ScatterElements (without reduction), deprecated at 11."""

    op_type = "Scatter"


@register
class ScatterND(_ScatterOp):
    op_type = "ScatterND"

    def compute(self, ctx, data, indices, updates):
        k = indices.shape[-1]
        expected = indices.shape[:-1] + data.shape[k:]
        if updates.shape != expected:
            raise ctx.fail(f"updates {updates.shape} must have shape {expected}")
        index = _gather_nd_index(ctx, data.shape, indices, 0)[1:]
        return _scatter(ctx, data, index, updates.reshape((-1,) + data.shape[k:]))


@register
class TensorScatter(_ScatterOp):
    """Writes ``update`` into a copy of the KV cache ``past_cache`` along the sequence ``axis``, starting at each
    batch entry's ``write_indices`` (0 by default), wrapping around in ``circular`` mode."""

    op_type = "TensorScatter"
    attrs = {"axis": -2, "mode": "linear"}

    def compute(self, ctx, past, update, write_indices=None):
        axis = _axis(ctx, past.ndim)
        if axis == 0:
            raise ctx.fail("axis must not be the batch axis 0")
        max_len, seq_len = past.shape[axis], update.shape[axis]
        starts = np.zeros(past.shape[0], np.int64) if write_indices is None else write_indices.astype(np.int64)
        circular = ctx.attr("mode") == "circular"
        if not circular and ((starts < 0).any() or (starts + seq_len > max_len).any()):
            raise ctx.fail(f"write_indices {starts.tolist()} + {seq_len} exceed the cache length {max_len}")
        out = past.copy()
        lead = (slice(None),) * (axis - 1)
        for b, start in enumerate(starts):
            positions = start + np.arange(seq_len)
            if circular:
                positions %= max_len
            out[b][lead + (positions,)] = update[b]
        return out

    def cost(self, ctx):
        return input_elements_cost(ctx, 0.0)


# -- OneHot -----------------------------------------------------------------------------------------------------


@register
class OneHot(OpDef):
    """``values[1]`` where an index equals the position along the new ``axis``, else ``values[0]``; negative
    indices count from ``depth``, and indices out of range give an all-off row (not an error)."""

    op_type = "OneHot"
    fusion = FusionClass.INJECTIVE
    attrs = {"axis": -1}

    def compute(self, ctx, indices, depth, values):
        depth = int(scalar(depth))
        if depth < 1:
            raise ctx.fail(f"depth {depth} must be positive")
        axis = normalize_axis(int(ctx.attr("axis")), indices.ndim + 1, ctx.fail)
        idx = np.asarray(indices).astype(np.int64)  # float indices are truncated
        idx = np.where(idx < 0, idx + depth, idx)
        hot = np.expand_dims(idx, axis) == np.arange(depth).reshape((depth,) + (1,) * (indices.ndim - axis))
        off, on = values.reshape(-1)[:2]
        return np.where(hot, on, off).astype(values.dtype, copy=False)

    def infer(self, ctx):
        ti, tv = ctx.input_type(0), ctx.input_type(2)
        dtype = tv.dtype if tv is not None else None
        if ti is None or ti.shape is None:
            return [TensorType(dtype, None)]
        depth = ctx.const(1)
        depth = int(scalar(depth)) if depth is not None else None
        axis = normalize_axis(int(ctx.attr("axis")), len(ti.shape) + 1, ctx.shape_error)
        return [TensorType(dtype, ti.shape[:axis] + (depth,) + ti.shape[axis:])]


# -- data-dependent selections ----------------------------------------------------------------------------------


@register
class NonZero(OpDef):
    op_type = "NonZero"

    def compute(self, ctx, x):
        if x.ndim == 0:  # numpy refuses 0-d nonzero: no coordinates, one column if the scalar is nonzero
            return np.zeros((0, int(bool(x))), np.int64)
        return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)

    def infer(self, ctx):
        t = ctx.input_type(0)
        return [TensorType(np.int64, (t.rank if t is not None else None, None))]


@register
class Compress(OpDef):
    """Keeps the slices along ``axis`` (of the flattened input without one) whose condition is true; a shorter
    condition leaves the remaining slices out."""

    op_type = "Compress"

    def compute(self, ctx, x, condition):
        cond = np.asarray(condition).astype(bool).reshape(-1)
        axis = ctx.attrs.get("axis")
        if axis is None:
            x, axis = x.reshape(-1), 0
        axis = normalize_axis(int(axis), x.ndim, ctx.fail)
        if cond[x.shape[axis]:].any():
            raise ctx.fail(f"condition of length {cond.size} selects beyond the axis of size {x.shape[axis]}")
        return np.compress(cond[:x.shape[axis]], x, axis=axis)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        axis = ctx.attrs.get("axis")
        if axis is None or t.shape is None:
            return [TensorType(t.dtype, (None,) if axis is None else None)]
        axis = normalize_axis(int(axis), len(t.shape), ctx.shape_error)
        return [TensorType(t.dtype, t.shape[:axis] + (None,) + t.shape[axis + 1:])]


@register
class Unique(OpDef):
    """Unique values (or slices along ``axis``), their first indices, the inverse map and counts; with
    sorted=0 in the order of first occurrence."""

    op_type = "Unique"
    attrs = {"sorted": 1}

    def compute(self, ctx, x):
        axis = ctx.attrs.get("axis")
        if axis is None:
            x = x.reshape(-1)
        else:
            axis = normalize_axis(int(axis), x.ndim, ctx.fail)
        y, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                              axis=axis)
        inverse = inverse.reshape(-1)
        if not int(ctx.attr("sorted")):
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            y = np.take(y, order, axis=0 if axis is None else axis)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        return y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        axis = ctx.attrs.get("axis")
        if axis is None:
            y_shape = (None,)
        elif t.shape is None:
            y_shape = None
        else:
            axis = normalize_axis(int(axis), len(t.shape), ctx.shape_error)
            y_shape = t.shape[:axis] + (None,) + t.shape[axis + 1:]
        index = TensorType(np.int64, (None,))
        return [TensorType(t.dtype, y_shape), index, index, index][:ctx.num_outputs]


def descending_order(x: np.ndarray, axis: int) -> np.ndarray:
    """Indices sorting ``x`` along ``axis`` from largest to smallest, equal values keeping index order.

    A stable ascending sort of the reversed axis, reversed again: equal values come out by increasing index,
    which negating (wrong for unsigned ints) or reversing a plain stable sort (decreasing index) would not give.
    """
    n = x.shape[axis]
    return n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)


@register
class TopK(OpDef):
    """The k largest (or smallest) entries along ``axis`` and their int64 indices, equal values by index."""

    op_type = "TopK"
    fusion = FusionClass.OPAQUE
    attrs = {"axis": -1, "largest": 1}

    def compute(self, ctx, x, k=None):
        k = int(scalar(moved_operand(ctx, "k", 10, 1, (x, k))))
        axis = _axis(ctx, x.ndim)
        if not 0 <= k <= x.shape[axis]:
            raise ctx.fail(f"k={k} is out of range for an axis of size {x.shape[axis]}")
        if int(ctx.attr("largest")):
            order = descending_order(x, axis)
        else:
            order = np.argsort(x, axis=axis, kind="stable")
        indices = np.take(order, np.arange(k), axis=axis)
        return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        if t.shape is None:
            shape = None
        else:
            k = moved_operand(ctx, "k", 10, 1)
            k = None if k is None or k is UNKNOWN_VALUE else int(scalar(k))
            axis = _axis(ctx, len(t.shape), ctx.shape_error)
            shape = t.shape[:axis] + (k,) + t.shape[axis + 1:]
        return [TensorType(t.dtype, shape), TensorType(np.int64, shape)]

    def cost(self, ctx):
        """A sort of every input row: about n*log2(n) comparisons per row of n."""
        t = ctx.input_type(0)
        n = t.shape[_axis(ctx, len(t.shape), ctx.shape_error)] if t is not None and t.shape else None
        per_element = float(np.log2(n)) if isinstance(n, int) and n > 1 else 1.0
        return input_elements_cost(ctx, per_element)


# -- scans and arg-reductions -----------------------------------------------------------------------------------


class _Cumulative(OpDef):
    """CumSum/CumProd: scan along the axis given as input 1, optionally exclusive (shifted by one, starting at
    the identity) and/or reversed."""

    fusion = FusionClass.REDUCTION
    attrs = {"exclusive": 0, "reverse": 0}
    scan = staticmethod(np.cumsum)
    identity = 0

    def compute(self, ctx, x, axis):
        axis = normalize_axis(int(scalar(axis)), x.ndim, ctx.fail)
        reverse = int(ctx.attr("reverse"))
        if reverse:
            x = np.flip(x, axis)
        out = self.scan(x, axis=axis, dtype=x.dtype)
        if int(ctx.attr("exclusive")):
            head = np.full_like(np.take(out, [0], axis=axis), self.identity)
            out = np.concatenate([head, np.take(out, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis)
        return np.flip(out, axis) if reverse else out

    def infer(self, ctx):
        return same_type(ctx)

    def cost(self, ctx):
        return input_elements_cost(ctx)


@register
class CumSum(_Cumulative):
    op_type = "CumSum"


@register
class CumProd(_Cumulative):
    op_type = "CumProd"
    scan = staticmethod(np.cumprod)
    identity = 1


class _ArgReduce(OpDef):
    """ArgMax/ArgMin: int64 position of the extreme along ``axis``; the first one unless select_last_index."""

    fusion = FusionClass.REDUCTION
    attrs = {"axis": 0, "keepdims": 1, "select_last_index": 0}
    find = staticmethod(np.argmax)

    def compute(self, ctx, x):
        axis = _axis(ctx, x.ndim)
        if x.shape[axis] == 0:
            raise ctx.fail(f"{self.op_type} over an empty axis")
        if int(ctx.attr("select_last_index")):
            out = x.shape[axis] - 1 - self.find(np.flip(x, axis), axis=axis)
        else:
            out = self.find(x, axis=axis)
        if int(ctx.attr("keepdims")):
            out = np.expand_dims(out, axis)
        return np.asarray(out, dtype=np.int64)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None:
            return [TensorType(np.int64, None)]
        axis = _axis(ctx, len(t.shape), ctx.shape_error)
        keep = (1,) if int(ctx.attr("keepdims")) else ()
        return [TensorType(np.int64, t.shape[:axis] + keep + t.shape[axis + 1:])]

    def cost(self, ctx):
        return input_elements_cost(ctx)


@register
class ArgMax(_ArgReduce):
    op_type = "ArgMax"


@register
class ArgMin(_ArgReduce):
    op_type = "ArgMin"
    find = staticmethod(np.argmin)
