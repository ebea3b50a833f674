"""Ops: tensor manipulation — creating, reshaping, reordering, joining, splitting, slicing and padding tensors.

Constant, ConstantOfShape, Identity, Shape, Size, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split,
Slice, Pad, Tile, Expand, DepthToSpace, SpaceToDepth, Range, EyeLike, Trilu, CenterCropPad, Col2Im,
ReverseSequence.

Several operands moved from attributes to inputs over the opsets (Reshape's shape at 5, Tile's repeats at 6,
Slice's starts/ends/axes at 10, Pad's pads at 11, Squeeze/Unsqueeze's axes and Split's split at 13);
:func:`moved_operand` reads such an operand from wherever the node's opset keeps it, both at run time and in
shape rules (where an input operand is only known when it is a compile-time constant).

Shape rules work on dims that may be symbolic (``"N"``) or unknown (None): the ``dim_*`` helpers below do the
arithmetic, giving None whenever a result cannot be named (``N * 2`` is not a symbol of the model).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import ShapeInferenceError
from ..ir.types import Dim, TensorType, dtype_from_onnx
from .registry import Cost, FusionClass, OpContext, OpDef, broadcast_shapes, normalize_axes, normalize_axis, register

# -- helpers shared with indexing.py ----------------------------------------------------------------------------

#: "an input operand is present but its value is unknown at compile time" (distinct from None: absent)
UNKNOWN_VALUE = object()


def operand(ctx: OpContext, index: int, inputs: Sequence | None = None):
    """Input ``index``: its run-time value when ``inputs`` (the compute inputs) are given; in a shape rule
    (``inputs`` None) its compile-time constant, or :data:`UNKNOWN_VALUE` when it has none. None when absent."""
    if inputs is not None:
        return inputs[index] if index < len(inputs) else None
    if index >= ctx.num_inputs or ctx.node.inputs[index] is None:
        return None
    value = ctx.const(index)
    return UNKNOWN_VALUE if value is None else value


def moved_operand(ctx: OpContext, attr: str, since: int, index: int, inputs: Sequence | None = None):
    """An operand that is attribute ``attr`` before opset ``since`` and input ``index`` from then on
    (see :func:`operand` for ``inputs`` and the values returned)."""
    if ctx.opset < since:
        return ctx.attrs.get(attr)
    return operand(ctx, index, inputs)


def int_list(value) -> list[int] | None:
    """An attribute list or 1-D tensor as a list of Python ints (None and UNKNOWN_VALUE pass through)."""
    if value is None or value is UNKNOWN_VALUE:
        return value
    return [int(v) for v in np.asarray(value).reshape(-1)]


def scalar(x):
    """The one element of a scalar operand, as a numpy scalar (models often pass shape-[1] tensors)."""
    x = np.asarray(x)
    if x.size != 1:
        raise ValueError(f"expected a single value, got shape {x.shape}")
    return x.reshape(-1)[0]


def const_ints(ctx: OpContext, index: int) -> list[int] | None:
    """Input ``index`` as a list of ints when it is a compile-time constant, else None."""
    value = ctx.const(index)
    return None if value is None else int_list(value)


def input_shape(ctx: OpContext, index: int = 0) -> tuple | None:
    t = ctx.input_type(index)
    return None if t is None else t.shape


def input_dtype(ctx: OpContext, index: int = 0) -> np.dtype | None:
    t = ctx.input_type(index)
    return None if t is None else t.dtype




def same_type(ctx: OpContext, index: int = 0) -> list:
    """The shape rule of ops whose output has their input's type."""
    t = ctx.input_type(index)
    return [TensorType(t.dtype, t.shape) if t is not None else None]


def elements(t: TensorType | None) -> int:
    """Static element count of a type, 0 when unknown (for costs)."""
    n = t.numel() if isinstance(t, TensorType) else None
    return n or 0


def input_elements_cost(ctx: OpContext, per_element: float = 1.0, index: int = 0) -> Cost:
    """The default byte counts with FLOPs proportional to input ``index``'s elements (reductions, scans)."""
    base = OpDef.cost(ctx.opdef, ctx)
    return Cost(int(per_element * elements(ctx.input_type(index))), base.bytes_read, base.bytes_written)


def dim_product(dims: Sequence[Dim]) -> Dim:
    """Product of dims: an int when all are static, the one symbolic dim when the rest multiply to 1, else None."""
    static = math.prod(d for d in dims if isinstance(d, int))
    others = [d for d in dims if not isinstance(d, int)]
    if not others:
        return static
    if static == 0:
        return 0
    if len(others) == 1 and static == 1:
        return others[0]
    return None


def dim_scale(d: Dim, mul: int = 1, div: int = 1) -> Dim:
    """``d * mul // div`` for a static dim; a symbolic dim survives only when mul == div."""
    if isinstance(d, int):
        return d * mul // div
    return d if mul == div else None


def dim_add(d: Dim, extra: int) -> Dim:
    if isinstance(d, int):
        return d + extra
    return d if extra == 0 else None


def merge_dims(dims: Sequence[Dim]) -> Dim:
    """The dim that several dims known to be equal share: a static one, else a symbolic one, else None."""
    for d in dims:
        if isinstance(d, int):
            return d
    for d in dims:
        if d is not None:
            return d
    return None


# -- constants --------------------------------------------------------------------------------------------------


def constant_value(attrs: dict) -> np.ndarray:
    """The value a Constant node's (single) value attribute describes, with ONNX's dtypes."""
    for key, dtype in (("value", None), ("sparse_value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64), ("value_ints", np.int64),
                       ("value_string", object), ("value_strings", object)):
        if attrs.get(key) is not None:
            return np.asarray(attrs[key], dtype=dtype)
    raise ValueError("Constant has none of the value attributes")


@register
class Constant(OpDef):
    """The importer turns Constant nodes into weights; this definition serves graphs built otherwise."""

    op_type = "Constant"

    def compute(self, ctx):
        return constant_value(ctx.attrs)

    def infer(self, ctx):
        try:
            return [TensorType.of(constant_value(ctx.attrs))]
        except ValueError as exc:
            raise ctx.shape_error(str(exc)) from None


def _constant_of_shape_fill(ctx: OpContext) -> np.ndarray:
    value = ctx.attrs.get("value")
    if value is None:
        return np.zeros(1, np.float32)
    value = np.asarray(value)
    if value.size != 1:
        raise ctx.shape_error(f"'value' must hold one element, holds {value.size}")
    return value.reshape(1)


@register
class ConstantOfShape(OpDef):
    op_type = "ConstantOfShape"

    def compute(self, ctx, shape):
        fill = _constant_of_shape_fill(ctx)
        dims = int_list(shape)
        if any(d < 0 for d in dims):
            raise ctx.fail(f"negative dimension in shape {dims}")
        return np.full(dims, fill[0], dtype=fill.dtype)

    def infer(self, ctx):
        dtype = _constant_of_shape_fill(ctx).dtype
        dims = const_ints(ctx, 0)
        if dims is not None:
            return [TensorType(dtype, tuple(dims))]
        shape = input_shape(ctx, 0)
        rank = shape[0] if shape is not None and len(shape) == 1 else None
        return [TensorType(dtype, (None,) * rank if isinstance(rank, int) else None)]


@register
class Identity(OpDef):
    """Passes a tensor, sequence or optional through unchanged."""

    op_type = "Identity"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, x):
        return [x]  # wrapped: a sequence input is itself a list

    def infer(self, ctx):
        v = ctx.node.inputs[0]
        return [v.type if v is not None else None]


# -- shape queries ----------------------------------------------------------------------------------------------


def _shape_range(ctx: OpContext, rank: int) -> tuple[int, int]:
    """Shape's [start, end) over the input's dims (opset 15), clamped like Python slicing."""
    def clamp(v: int) -> int:
        return min(max(v + rank if v < 0 else v, 0), rank)
    start = clamp(int(ctx.attr("start", 0)))
    end = ctx.attrs.get("end")
    end = rank if end is None else clamp(int(end))
    return start, max(start, end)


@register
class Shape(OpDef):
    op_type = "Shape"

    def compute(self, ctx, x):
        start, end = _shape_range(ctx, x.ndim)
        return np.array(x.shape[start:end], dtype=np.int64)

    def infer(self, ctx):
        shape = input_shape(ctx, 0)
        if shape is None:
            return [TensorType(np.int64, (None,))]
        start, end = _shape_range(ctx, len(shape))
        return [TensorType(np.int64, (end - start,))]


@register
class Size(OpDef):
    op_type = "Size"

    def compute(self, ctx, x):
        return np.array(x.size, dtype=np.int64)

    def infer(self, ctx):
        return [TensorType(np.int64, ())]


# -- reshaping --------------------------------------------------------------------------------------------------


def reshape_target(ctx: OpContext, in_dims: Sequence[Dim], shape: Sequence[int], fail) -> list[Dim]:
    """Reshape's output dims: 0 copies the input dim (unless allowzero), one -1 takes what is left.

    Works on symbolic input dims as well: a symbol copied by a 0 (or listed in both) cancels out, so that
    (N, 3, 4) -> [0, -1] gives (N, 12) and (N, 12) -> [-1, 3, 4] gives (N, 3, 4).
    """
    allowzero = int(ctx.attr("allowzero", 0))
    if shape.count(-1) > 1:
        raise fail(f"shape {list(shape)} has more than one -1")
    if any(d < -1 for d in shape):
        raise fail(f"shape {list(shape)} has a negative dimension")
    if allowzero and 0 in shape and -1 in shape:
        raise fail(f"shape {list(shape)} has both 0 and -1 with allowzero=1")
    out: list[Dim] = []
    for i, d in enumerate(shape):
        if d == 0 and not allowzero:
            if i >= len(in_dims):
                raise fail(f"shape {list(shape)} copies dim {i} (0) of a rank-{len(in_dims)} input")
            out.append(in_dims[i])
        else:
            out.append(d)
    if -1 not in out:
        return out
    # what the -1 stands for: the input's dims divided by the output's other dims, cancelling equal symbols
    rest_in = list(in_dims)
    rest_out = [d for d in out if d != -1]
    for d in list(rest_out):
        if not isinstance(d, int) and d is not None and d in rest_in:
            rest_in.remove(d)
            rest_out.remove(d)
    static_in = math.prod(d for d in rest_in if isinstance(d, int))
    static_out = math.prod(d for d in rest_out if isinstance(d, int))
    sym_in = [d for d in rest_in if not isinstance(d, int)]
    sym_out = [d for d in rest_out if not isinstance(d, int)]
    if sym_out or len(sym_in) > 1 or None in sym_in:
        missing = None
    elif static_out == 0:
        if static_in != 0:
            raise fail(f"cannot reshape {tuple(in_dims)} to {list(shape)}")
        missing = None  # 0 elements: the -1 is ambiguous
    elif static_in % static_out:
        raise fail(f"cannot reshape {tuple(in_dims)} to {list(shape)}")
    elif sym_in:
        missing = sym_in[0] if static_in == static_out else None
    else:
        missing = static_in // static_out
    return [missing if d == -1 else d for d in out]


@register
class Reshape(OpDef):
    op_type = "Reshape"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, data, shape=None):
        target = int_list(moved_operand(ctx, "shape", 5, 1, (data, shape)))
        dims = reshape_target(ctx, data.shape, target, ctx.fail)
        if None in dims or math.prod(dims) != data.size:
            raise ctx.fail(f"cannot reshape {data.shape} to {target}")
        return data.reshape(dims)

    def infer(self, ctx):
        t = ctx.input_type(0)
        target = int_list(moved_operand(ctx, "shape", 5, 1))
        if t is None:
            return None
        if target is None or target is UNKNOWN_VALUE:
            shape = input_shape(ctx, 1)
            rank = shape[0] if shape is not None and len(shape) == 1 and isinstance(shape[0], int) else None
            return [TensorType(t.dtype, None if rank is None else (None,) * rank)]
        if t.shape is None:
            dims = [None if d in (0, -1) else d for d in target]
            if int(ctx.attr("allowzero", 0)):
                dims = [0 if d == 0 else dim for d, dim in zip(target, dims)]
            return [TensorType(t.dtype, tuple(dims))]
        return [TensorType(t.dtype, tuple(reshape_target(ctx, t.shape, target, ctx.shape_error)))]


@register
class Flatten(OpDef):
    op_type = "Flatten"
    fusion = FusionClass.INJECTIVE
    attrs = {"axis": 1}

    @staticmethod
    def _axis(ctx, rank, fail) -> int:
        axis = int(ctx.attr("axis"))
        if not -rank <= axis <= rank:
            raise fail(f"axis {axis} is out of range for rank {rank}")
        return axis + rank if axis < 0 else axis

    def compute(self, ctx, x):
        axis = self._axis(ctx, x.ndim, ctx.fail)
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        if t.shape is None:
            return [TensorType(t.dtype, (None, None))]
        axis = self._axis(ctx, len(t.shape), ctx.shape_error)
        return [TensorType(t.dtype, (dim_product(t.shape[:axis]), dim_product(t.shape[axis:])))]


def _squeeze_axes(ctx: OpContext, shape: Sequence[Dim], axes, fail) -> list[int] | None:
    """The axes Squeeze removes (all static 1-dims when none are given); None when that cannot be told."""
    if axes is None:
        if any(not isinstance(d, int) for d in shape):
            return None  # a symbolic dim may or may not be 1
        return [i for i, d in enumerate(shape) if d == 1]
    axes = normalize_axes(axes, len(shape), fail)
    for a in axes:
        if isinstance(shape[a], int) and shape[a] != 1:
            raise fail(f"cannot squeeze axis {a} of size {shape[a]}")
    return axes


@register
class Squeeze(OpDef):
    op_type = "Squeeze"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, data, axes=None):
        axes = _squeeze_axes(ctx, data.shape, int_list(moved_operand(ctx, "axes", 13, 1, (data, axes))), ctx.fail)
        return data.reshape([d for i, d in enumerate(data.shape) if i not in axes])

    def infer(self, ctx):
        t = ctx.input_type(0)
        axes = int_list(moved_operand(ctx, "axes", 13, 1))
        if t is None or t.shape is None or axes is UNKNOWN_VALUE:
            return [TensorType(t.dtype, None)] if t is not None else None
        axes = _squeeze_axes(ctx, t.shape, axes, ctx.shape_error)
        if axes is None:
            return [TensorType(t.dtype, None)]
        return [TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in axes))]


def _unsqueeze_shape(shape: Sequence[Dim], axes: Sequence[int], fail) -> tuple:
    rank = len(shape) + len(axes)
    axes = set(normalize_axes(axes, rank, fail))
    dims = iter(shape)
    return tuple(1 if i in axes else next(dims) for i in range(rank))


@register
class Unsqueeze(OpDef):
    op_type = "Unsqueeze"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, data, axes=None):
        axes = int_list(moved_operand(ctx, "axes", 13, 1, (data, axes)))
        return data.reshape(_unsqueeze_shape(data.shape, axes, ctx.fail))

    def infer(self, ctx):
        t = ctx.input_type(0)
        axes = int_list(moved_operand(ctx, "axes", 13, 1))
        if t is None:
            return None
        if t.shape is None or axes is None or axes is UNKNOWN_VALUE:
            return [TensorType(t.dtype, None)]
        return [TensorType(t.dtype, _unsqueeze_shape(t.shape, axes, ctx.shape_error))]


@register
class Transpose(OpDef):
    op_type = "Transpose"
    fusion = FusionClass.INJECTIVE

    @staticmethod
    def _perm(ctx, rank, fail) -> list[int]:
        perm = ctx.attrs.get("perm")
        if perm is None:
            return list(range(rank))[::-1]
        if sorted(int(p) for p in perm) != list(range(rank)):
            raise fail(f"perm {list(perm)} is not a permutation of the {rank} axes")
        return [int(p) for p in perm]

    def compute(self, ctx, x):
        return np.transpose(x, self._perm(ctx, x.ndim, ctx.fail))

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None:
            return same_type(ctx)
        perm = self._perm(ctx, len(t.shape), ctx.shape_error)
        return [TensorType(t.dtype, tuple(t.shape[p] for p in perm))]


# -- joining and splitting --------------------------------------------------------------------------------------


@register
class Concat(OpDef):
    op_type = "Concat"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, *inputs):
        arrays = [x for x in inputs if x is not None]
        axis = normalize_axis(int(ctx.attr("axis")), arrays[0].ndim, ctx.fail)
        try:
            return np.concatenate(arrays, axis=axis)
        except ValueError as exc:
            raise ctx.fail(str(exc)) from None

    def infer(self, ctx):
        types = [ctx.input_type(i) for i in range(ctx.num_inputs)]
        if any(t is None for t in types) or not types:
            return None
        dtype = types[0].dtype
        shapes = [t.shape for t in types if t.shape is not None]
        if len(shapes) < len(types):
            rank = len(shapes[0]) if shapes else None
            return [TensorType(dtype, None if rank is None else (None,) * rank)]
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes):
            raise ctx.shape_error(f"inputs of ranks {[len(s) for s in shapes]} cannot be concatenated")
        axis = normalize_axis(int(ctx.attr("axis")), rank, ctx.shape_error)
        dims = [merge_dims([s[i] for s in shapes]) for i in range(rank)]
        along = [s[axis] for s in shapes]
        nonzero = [d for d in along if d != 0]
        if all(isinstance(d, int) for d in along):
            dims[axis] = sum(along)
        else:
            dims[axis] = nonzero[0] if len(nonzero) == 1 else None
        return [TensorType(dtype, tuple(dims))]


def _split_sizes(ctx: OpContext, dim: int, split, fail) -> list[int]:
    """Sizes of Split's outputs along the axis: given, or equal parts (the last smaller at opset 18+)."""
    n = ctx.num_outputs
    if split is not None:
        if len(split) != n or any(s < 0 for s in split) or sum(split) != dim:
            raise fail(f"split {list(split)} does not divide a dim of {dim} into {n} outputs")
        return list(split)
    if ctx.opset >= 18:
        n = int(ctx.attr("num_outputs", n))
        chunk = -(-dim // n)
        if n != ctx.num_outputs or dim - chunk * (n - 1) < 0:
            raise fail(f"cannot split a dim of {dim} into num_outputs={n} parts for {ctx.num_outputs} outputs")
        return [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if dim % n:
        raise fail(f"a dim of {dim} does not split into {n} equal parts")
    return [dim // n] * n


@register
class Split(OpDef):
    op_type = "Split"
    fusion = FusionClass.INJECTIVE
    attrs = {"axis": 0}

    def compute(self, ctx, x, split=None):
        axis = normalize_axis(int(ctx.attr("axis")), x.ndim, ctx.fail)
        sizes = _split_sizes(ctx, x.shape[axis], int_list(moved_operand(ctx, "split", 13, 1, (x, split))), ctx.fail)
        return np.split(x, np.cumsum(sizes)[:-1], axis=axis)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        if t.shape is None:
            return [TensorType(t.dtype, None)] * ctx.num_outputs
        axis = normalize_axis(int(ctx.attr("axis")), len(t.shape), ctx.shape_error)
        split = int_list(moved_operand(ctx, "split", 13, 1))
        dim = t.shape[axis]
        if split is UNKNOWN_VALUE or (split is None and not isinstance(dim, int)):
            sizes = [None] * ctx.num_outputs
        elif split is not None and not isinstance(dim, int):
            sizes = split
        else:
            try:
                sizes = _split_sizes(ctx, dim, split, ctx.shape_error)
            except ShapeInferenceError:
                # not necessarily a bad model: an If branch that is never taken for these shapes (AffineGrid's
                # function body splits a 5-D shape into 4) must still import; running it fails instead
                sizes = [None] * ctx.num_outputs
        return [TensorType(t.dtype, t.shape[:axis] + (s,) + t.shape[axis + 1:]) for s in sizes]


# -- slicing and padding ----------------------------------------------------------------------------------------


def slice_bounds(start: int, end: int, step: int, dim: int) -> slice:
    """ONNX Slice's clamping of (start, end, step) on a dim, as a Python slice that needs no wrap-around."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


def _slice_args(ctx: OpContext, rank: int, starts, ends, axes, steps, fail) -> list[tuple[int, int, int, int]]:
    """(axis, start, end, step) per sliced axis, from Slice's operands (attributes before opset 10)."""
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise fail("starts, ends, axes and steps must have the same length")
    if 0 in steps:
        raise fail("steps must not be 0")
    axes = normalize_axes(axes, rank, fail)
    return list(zip(axes, starts, ends, steps))


def _slice_operands(ctx: OpContext, inputs=None):
    """Slice's starts, ends, axes, steps (each a list of ints, None when absent, or UNKNOWN_VALUE)."""
    if ctx.opset < 10:
        return [int_list(ctx.attrs.get(n)) for n in ("starts", "ends", "axes")] + [None]
    return [int_list(operand(ctx, i, inputs)) for i in (1, 2, 3, 4)]


@register
class Slice(OpDef):
    op_type = "Slice"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, data, *operands):
        starts, ends, axes, steps = _slice_operands(ctx, (data,) + operands)
        index = [slice(None)] * data.ndim
        for axis, start, end, step in _slice_args(ctx, data.ndim, starts, ends, axes, steps, ctx.fail):
            index[axis] = slice_bounds(start, end, step, data.shape[axis])
        return data[tuple(index)]

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None:
            return same_type(ctx)
        starts, ends, axes, steps = _slice_operands(ctx)
        if UNKNOWN_VALUE in (starts, ends, axes, steps):
            # the unsliced axes keep their dims only when we know which axes are sliced
            return [TensorType(t.dtype, (None,) * len(t.shape))]
        dims = list(t.shape)
        for axis, start, end, step in _slice_args(ctx, len(dims), starts, ends, axes, steps, ctx.shape_error):
            d = dims[axis]
            if isinstance(d, int):
                dims[axis] = len(range(*slice_bounds(start, end, step, d).indices(d)))
            elif not (start == 0 and step == 1 and end >= 2 ** 31 - 1):
                dims[axis] = None  # x[0:INT_MAX] is the only slice of a symbolic dim we can name
        return [TensorType(t.dtype, tuple(dims))]


def _pad_operands(ctx: OpContext, rank: int, inputs=None):
    """Pad's per-axis (begin, end) pads over all ``rank`` axes and its constant value (None if unknown)."""
    if ctx.opset < 11:
        pads, value, axes = int_list(ctx.attrs.get("pads")), ctx.attr("value", 0.0), None
    else:
        pads, value = int_list(operand(ctx, 1, inputs)), operand(ctx, 2, inputs)
        axes = int_list(operand(ctx, 3, inputs)) if ctx.opset >= 18 else None
    if pads is UNKNOWN_VALUE or axes is UNKNOWN_VALUE:
        return None, value
    if axes is None:
        axes = list(range(rank))
    fail = ctx.fail if inputs is not None else ctx.shape_error
    axes = normalize_axes(axes, rank, fail)
    if pads is None or len(pads) != 2 * len(axes):
        raise fail(f"pads {pads} must hold 2 values per padded axis ({len(axes)})")
    per_axis = [(0, 0)] * rank
    for i, a in enumerate(axes):
        per_axis[a] = (pads[i], pads[i + len(axes)])
    return per_axis, value


@register
class Pad(OpDef):
    """Constant, edge, reflect and wrap padding; negative pads crop (applied before the positive ones)."""

    op_type = "Pad"
    fusion = FusionClass.INJECTIVE
    attrs = {"mode": "constant"}

    def compute(self, ctx, data, *operands):
        pads, value = _pad_operands(ctx, data.ndim, (data,) + operands)
        crop = tuple(slice(max(-b, 0), data.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(pads))
        data = data[crop]
        widths = [(max(b, 0), max(e, 0)) for b, e in pads]
        mode = ctx.attr("mode")
        if mode == "constant":
            fill = np.asarray(0 if value is None or np.size(value) == 0 else value).reshape(-1)[0]
            return np.pad(data, widths, mode="constant", constant_values=np.asarray(fill).astype(data.dtype))
        if mode not in ("edge", "reflect", "wrap"):
            raise ctx.shape_error(f"unknown mode {mode!r}")
        if any(data.shape[i] == 0 for i, w in enumerate(widths) if w != (0, 0)):
            raise ctx.fail(f"{mode} padding of an empty axis")
        return np.pad(data, widths, mode=mode)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None:
            return same_type(ctx)
        pads, _ = _pad_operands(ctx, len(t.shape))
        if pads is None:
            return [TensorType(t.dtype, (None,) * len(t.shape))]
        return [TensorType(t.dtype, tuple(dim_add(d, b + e) for d, (b, e) in zip(t.shape, pads)))]


@register
class CenterCropPad(OpDef):
    """Crop (window start rounded down) or zero-pad (the odd pixel on the right) each listed axis to a size."""

    op_type = "CenterCropPad"
    fusion = FusionClass.INJECTIVE

    def _axes(self, ctx, rank, n, fail) -> list[int]:
        axes = ctx.attrs.get("axes")
        axes = normalize_axes(axes if axes is not None else range(rank), rank, fail)
        if len(axes) != n:
            raise fail(f"shape has {n} entries for {len(axes)} axes")
        return axes

    def compute(self, ctx, data, shape):
        sizes = int_list(shape)
        axes = self._axes(ctx, data.ndim, len(sizes), ctx.fail)
        crop = [slice(None)] * data.ndim
        widths = [(0, 0)] * data.ndim
        for a, size in zip(axes, sizes):
            diff = data.shape[a] - size
            if diff > 0:
                crop[a] = slice(diff // 2, diff // 2 + size)
            else:
                widths[a] = (-diff // 2, -diff - (-diff // 2))
        return np.pad(data[tuple(crop)], widths)

    def infer(self, ctx):
        t = ctx.input_type(0)
        sizes = const_ints(ctx, 1)
        if t is None or t.shape is None or sizes is None:
            return same_type(ctx) if t is None or t.shape is None else [TensorType(t.dtype, (None,) * len(t.shape))]
        dims = list(t.shape)
        for a, size in zip(self._axes(ctx, len(dims), len(sizes), ctx.shape_error), sizes):
            dims[a] = size
        return [TensorType(t.dtype, tuple(dims))]


# -- repeating and broadcasting ---------------------------------------------------------------------------------


@register
class Tile(OpDef):
    op_type = "Tile"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, x, repeats):
        reps = int_list(repeats)
        if len(reps) != x.ndim or any(r < 0 for r in reps):
            raise ctx.fail(f"repeats {reps} do not fit an input of rank {x.ndim}")
        return np.tile(x, reps)

    def infer(self, ctx):
        t = ctx.input_type(0)
        reps = const_ints(ctx, 1)
        if t is None or t.shape is None:
            return same_type(ctx)
        if reps is None:
            return [TensorType(t.dtype, (None,) * len(t.shape))]
        if len(reps) != len(t.shape):
            raise ctx.shape_error(f"repeats {reps} do not fit an input of rank {len(t.shape)}")
        return [TensorType(t.dtype, tuple(dim_scale(d, r) for d, r in zip(t.shape, reps)))]


@register
class Expand(OpDef):
    """Bidirectional broadcast of the input with a shape (a 1 in the shape keeps the input's dim)."""

    op_type = "Expand"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, x, shape):
        try:
            out_shape = np.broadcast_shapes(x.shape, tuple(int_list(shape)))
        except ValueError:
            raise ctx.fail(f"cannot expand {x.shape} to {int_list(shape)}") from None
        return np.array(np.broadcast_to(x, out_shape))  # a writable copy, not a stride-0 view

    def infer(self, ctx):
        t = ctx.input_type(0)
        dims = const_ints(ctx, 1)
        if t is None:
            return None
        if dims is None or t.shape is None:
            shape = input_shape(ctx, 1)
            n = shape[0] if shape is not None and len(shape) == 1 else None
            if not isinstance(n, int) or t.shape is None:
                return [TensorType(t.dtype, None)]
            return [TensorType(t.dtype, (None,) * max(n, len(t.shape)))]
        return [TensorType(t.dtype, broadcast_shapes(t.shape, tuple(dims)))]


# -- moving data between space and depth ------------------------------------------------------------------------


def _block(ctx: OpContext) -> int:
    b = int(ctx.attr("blocksize"))
    if b <= 0:
        raise ctx.shape_error(f"blocksize {b} must be positive")
    return b


@register
class DepthToSpace(OpDef):
    """(N, C, H, W) -> (N, C/b², H*b, W*b); DCR mode reads channels as (bh, bw, c), CRD mode as (c, bh, bw)."""

    op_type = "DepthToSpace"
    fusion = FusionClass.INJECTIVE
    attrs = {"mode": "DCR"}

    def compute(self, ctx, x):
        b = _block(ctx)
        n, c, h, w = x.shape
        if c % (b * b):
            raise ctx.fail(f"{c} channels do not divide by blocksize² = {b * b}")
        if ctx.attr("mode") == "CRD":
            y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        else:
            y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None or len(t.shape) != 4:
            return same_type(ctx)
        b = _block(ctx)
        n, c, h, w = t.shape
        return [TensorType(t.dtype, (n, dim_scale(c, 1, b * b), dim_scale(h, b), dim_scale(w, b)))]


@register
class SpaceToDepth(OpDef):
    """(N, C, H, W) -> (N, C*b², H/b, W/b), the inverse of DepthToSpace in the same mode (DCR by default)."""

    op_type = "SpaceToDepth"
    fusion = FusionClass.INJECTIVE
    attrs = {"mode": "DCR"}

    def compute(self, ctx, x):
        b = _block(ctx)
        n, c, h, w = x.shape
        if h % b or w % b:
            raise ctx.fail(f"spatial dims {(h, w)} do not divide by blocksize {b}")
        y = x.reshape(n, c, h // b, b, w // b, b)
        y = y.transpose(0, 1, 3, 5, 2, 4) if ctx.attr("mode") == "CRD" else y.transpose(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * b * b, h // b, w // b)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None or t.shape is None or len(t.shape) != 4:
            return same_type(ctx)
        b = _block(ctx)
        n, c, h, w = t.shape
        return [TensorType(t.dtype, (n, dim_scale(c, b * b), dim_scale(h, 1, b), dim_scale(w, 1, b)))]


# -- generated tensors ------------------------------------------------------------------------------------------


def _range_length(start, limit, delta) -> int:
    return max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)


@register
class Range(OpDef):
    """start + i * delta for i in [0, ceil((limit - start) / delta)), in the inputs' dtype."""

    op_type = "Range"

    def compute(self, ctx, start, limit, delta):
        dtype = start.dtype
        start, limit, delta = scalar(start), scalar(limit), scalar(delta)
        if float(delta) == 0:
            raise ctx.fail("delta must not be 0")
        n = _range_length(start, limit, delta)
        # exact in int64 for integers, float64 for floats (then one rounding to the narrow float type)
        work = np.int64 if dtype.kind in "iu" else np.float64
        return (work(start) + np.arange(n, dtype=work) * work(delta)).astype(dtype)

    def infer(self, ctx):
        values = [ctx.const(i) for i in range(3)]
        dtype = input_dtype(ctx, 0)
        if all(v is not None and np.size(v) == 1 for v in values) and float(scalar(values[2])) != 0:
            return [TensorType(dtype, (_range_length(*(scalar(v) for v in values)),))]
        return [TensorType(dtype, (None,))]


def _eye_dtype(ctx: OpContext, input_dtype_: np.dtype | None) -> np.dtype | None:
    code = ctx.attrs.get("dtype")
    return input_dtype_ if code is None else dtype_from_onnx(int(code))


@register
class EyeLike(OpDef):
    op_type = "EyeLike"
    fusion = FusionClass.INJECTIVE
    attrs = {"k": 0}

    def compute(self, ctx, x):
        if x.ndim != 2:
            raise ctx.fail(f"input must be 2-D, is {x.shape}")
        return np.eye(*x.shape, k=int(ctx.attr("k")), dtype=_eye_dtype(ctx, x.dtype))

    def infer(self, ctx):
        t = ctx.input_type(0)
        return [TensorType(_eye_dtype(ctx, t.dtype if t else None), t.shape if t else None)]


@register
class Trilu(OpDef):
    """Keeps the upper (upper=1) or lower triangle of the last two dims, ``k`` diagonals above the main one."""

    op_type = "Trilu"
    fusion = FusionClass.INJECTIVE
    attrs = {"upper": 1}

    def compute(self, ctx, x, k=None):
        k = 0 if k is None else int(scalar(k))
        return np.triu(x, k) if int(ctx.attr("upper")) else np.tril(x, k)

    def infer(self, ctx):
        return same_type(ctx)


# -- Col2Im -----------------------------------------------------------------------------------------------------


def _col2im_params(ctx: OpContext, n_spatial: int) -> tuple[list[int], list[int], list[int]]:
    strides = ctx.attrs.get("strides") or [1] * n_spatial
    dilations = ctx.attrs.get("dilations") or [1] * n_spatial
    pads = ctx.attrs.get("pads") or [0] * (2 * n_spatial)
    return [int(s) for s in strides], [int(d) for d in dilations], [int(p) for p in pads]


@register
class Col2Im(OpDef):
    """Sums column blocks back into an image (torch.nn.Fold for any number of spatial dims).

    input[N, C*prod(block), L] holds, for each of the L block positions (a grid over the padded image) and each
    offset inside the block, one pixel of channel C; the pixels are added into the padded image one block
    offset at a time (a strided slice-add over the whole grid), then the padding is cropped.
    """

    op_type = "Col2Im"
    fusion = FusionClass.REDUCTION

    def compute(self, ctx, x, image_shape, block_shape):
        image, block = int_list(image_shape), int_list(block_shape)
        nd = len(image)
        strides, dilations, pads = _col2im_params(ctx, nd)
        n, cb, length = x.shape
        block_size = math.prod(block)
        if len(block) != nd or cb % block_size:
            raise ctx.fail(f"input {x.shape} does not fit image {image} and block {block}")
        padded = [image[i] + pads[i] + pads[i + nd] for i in range(nd)]
        grid = [(padded[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
        if math.prod(grid) != length:
            raise ctx.fail(f"{length} blocks given, the image holds {grid} = {math.prod(grid)}")
        c = cb // block_size
        cols = x.reshape(n, c, block_size, *grid)
        out = np.zeros((n, c, *padded), dtype=x.dtype)
        for b, offset in enumerate(np.ndindex(*block)):
            window = tuple(slice(o * d, o * d + s * (g - 1) + 1, s)
                           for o, d, s, g in zip(offset, dilations, strides, grid))
            out[(slice(None), slice(None)) + window] += cols[:, :, b]
        return out[(slice(None), slice(None)) + tuple(slice(pads[i], pads[i] + image[i]) for i in range(nd))]

    def infer(self, ctx):
        t = ctx.input_type(0)
        image, block = const_ints(ctx, 1), const_ints(ctx, 2)
        if t is None:
            return None
        if image is None or t.shape is None or len(t.shape) != 3:
            return [TensorType(t.dtype, None)]
        c = t.shape[1]
        channels = c // math.prod(block) if isinstance(c, int) and block is not None else None
        return [TensorType(t.dtype, (t.shape[0], channels, *image))]

    def cost(self, ctx):
        return input_elements_cost(ctx)


@register
class ReverseSequence(OpDef):
    """Reverses the first ``sequence_lens[b]`` entries along the time axis of each batch entry ``b``."""

    op_type = "ReverseSequence"
    fusion = FusionClass.INJECTIVE
    attrs = {"batch_axis": 1, "time_axis": 0}

    def compute(self, ctx, x, sequence_lens):
        batch_axis = normalize_axis(int(ctx.attr("batch_axis")), x.ndim, ctx.fail)
        time_axis = normalize_axis(int(ctx.attr("time_axis")), x.ndim, ctx.fail)
        lens = sequence_lens.astype(np.int64).reshape(-1)
        steps = x.shape[time_axis]
        if lens.shape[0] != x.shape[batch_axis] or (lens < 0).any() or (lens > steps).any():
            raise ctx.fail(f"sequence_lens {lens.tolist()} do not fit an input of shape {x.shape}")
        t = np.arange(steps)[None, :]
        source = np.where(t < lens[:, None], lens[:, None] - 1 - t, t)  # [batch, time]: which step to read
        if batch_axis > time_axis:
            source = source.T
        shape = [1] * x.ndim
        shape[batch_axis], shape[time_axis] = x.shape[batch_axis], steps
        return np.take_along_axis(x, source.reshape(shape), axis=time_axis)

    def infer(self, ctx):
        return same_type(ctx)
