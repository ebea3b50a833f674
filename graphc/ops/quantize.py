"""Quantization ops: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, QLinearMatMul, MatMulInteger.

Scales and zero points come in three layouts, told apart by their shape and the ``block_size`` attribute:

- per tensor: a scalar or a one-element 1-D tensor;
- per axis: a 1-D tensor as long as ``x.shape[axis]``;
- blocked (opset 21+, ``block_size > 0``): x's rank, with ``ceil(x.shape[axis] / block_size)`` entries along
  ``axis``; each entry covers ``block_size`` consecutive elements (the last block may be shorter). Such a scale
  does not broadcast against x: :func:`expand_param` repeats it first.

Integer quantization rounds half to even and saturates to the target's range (int2/int4/uint2/uint4 included);
float8 targets honour ``saturate``; float4/float6 always saturate. The quantized dtype is the zero point's, else
``output_dtype``'s (opset 21+), else uint8. Integer matrix products are computed exactly through float64 BLAS
(sums of int8/int16 products stay far below 2^53) instead of numpy's slow integer matmul.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..ir.types import TensorType, dtype_from_onnx
from .elementwise import cast_array, is_float, widen
from .registry import Cost, FusionClass, OpDef, broadcast_shapes, register


def expand_param(param: np.ndarray, shape: tuple, axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point made broadcastable against a tensor of ``shape`` (see the module docstring)."""
    if param.size == 1:
        return param.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = param.size
        return param.reshape(dims)
    return np.repeat(param, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)


def _quantized_dtype(ctx, zero_point_dtype) -> np.dtype:
    if zero_point_dtype is not None:
        return np.dtype(zero_point_dtype)
    code = ctx.attr("output_dtype", 0)
    return dtype_from_onnx(code) if code else np.dtype(np.uint8)


def saturate_to(values: np.ndarray, dtype: np.dtype, *, saturate: bool = True) -> np.ndarray:
    """Real values (already divided by the scale, zero point added) as quantized ``dtype`` values."""
    if is_float(dtype):
        return cast_array(values, dtype, saturate=saturate)
    info = ml_dtypes.iinfo(dtype)
    with np.errstate(invalid="ignore"):
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)


@register
class QuantizeLinear(OpDef):
    """y = saturate(round(x / scale) + zero_point)."""

    op_type = "QuantizeLinear"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 4
    attrs = {"axis": 1, "block_size": 0, "saturate": 1}

    def infer(self, ctx):
        x, zp = ctx.input_type(0), ctx.input_type(2)
        if zp is not None and zp.dtype is None:
            return [None]
        return [TensorType(_quantized_dtype(ctx, zp.dtype if zp is not None else None), None if x is None else x.shape)]

    def compute(self, ctx, x, scale, zero_point=None):
        axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
        dtype = _quantized_dtype(ctx, None if zero_point is None else zero_point.dtype)
        scale = expand_param(scale, x.shape, axis, block)
        precision = ctx.attr("precision", 0)
        with np.errstate(all="ignore"):
            if precision:  # opset 23+: the dtype the division is done in
                p = dtype_from_onnx(precision)
                scaled = x.astype(p) / scale.astype(p)
            elif x.dtype == scale.dtype:
                scaled = x / scale
            else:
                scaled = widen(x) / widen(scale)
            if is_float(dtype):
                scaled = widen(scaled)
                # float zero points are 0 by the spec; adding one anyway would turn -0 into +0
                if zero_point is not None and np.any(widen(zero_point) != 0):
                    scaled = scaled + expand_param(widen(zero_point), x.shape, axis, block)
            else:
                scaled = np.rint(scaled.astype(np.float64))
                if zero_point is not None:
                    scaled = scaled + expand_param(zero_point.astype(np.float64), x.shape, axis, block)
        return saturate_to(scaled, dtype, saturate=bool(ctx.attrs["saturate"]))


@register
class DequantizeLinear(OpDef):
    """y = (x - zero_point) * scale, in float32 then rounded to the scale's dtype (or ``output_dtype``)."""

    op_type = "DequantizeLinear"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 2
    attrs = {"axis": 1, "block_size": 0}

    @staticmethod
    def _out_dtype(ctx, scale_dtype):
        code = ctx.attr("output_dtype", 0)
        if code:
            return dtype_from_onnx(code)
        if scale_dtype is not None and np.dtype(scale_dtype) == np.dtype(ml_dtypes.float8_e8m0fnu):
            return np.dtype(np.float32)  # e8m0 is a scale format, not a result type
        return scale_dtype

    def infer(self, ctx):
        x, scale = ctx.input_type(0), ctx.input_type(1)
        dtype = self._out_dtype(ctx, None if scale is None else scale.dtype)
        return [TensorType(dtype, None if x is None else x.shape)]

    def compute(self, ctx, x, scale, zero_point=None):
        axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
        values = widen(x).astype(np.float32)
        if zero_point is not None:
            values = values - expand_param(widen(zero_point).astype(np.float32), x.shape, axis, block)
        result = values * expand_param(widen(scale).astype(np.float32), x.shape, axis, block)
        return result.astype(self._out_dtype(ctx, scale.dtype))


@register
class DynamicQuantizeLinear(OpDef):
    """x (float32) -> uint8 y, its scale and zero point, from x's range extended to include 0."""

    op_type = "DynamicQuantizeLinear"
    fusion = FusionClass.REDUCTION  # the range is a reduction over all of x
    flops_per_element = 6

    def infer(self, ctx):
        x = ctx.input_type(0)
        return [TensorType(np.uint8, None if x is None else x.shape), TensorType(np.float32, ()),
                TensorType(np.uint8, ())]

    def compute(self, ctx, x):
        x = x.astype(np.float32, copy=False)
        high = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
        low = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
        # an all-zero x would give scale 0 and a 0/0 zero point; any positive scale quantizes it to zeros
        scale = np.float32((high - low) if high != low else 1) / np.float32(255)
        zero_point = np.rint(np.clip(-low / scale, 0, 255))
        y = saturate_to(np.rint(x / scale) + zero_point, np.dtype(np.uint8))
        return y, np.asarray(scale, dtype=np.float32), np.asarray(zero_point, dtype=np.uint8)


# -- integer matrix products ---------------------------------------------------------------------------------------

def matmul_shape(a: tuple | None, b: tuple | None) -> tuple | None:
    """numpy.matmul's result shape for shapes with symbolic or unknown dims (None when a rank is unknown)."""
    if a is None or b is None or not a or not b:
        return None
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    if batch is None:
        return None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _centered(x: np.ndarray, zero_point: np.ndarray | None, per_row: bool) -> np.ndarray:
    """x - zero_point in float64, ready for an exact BLAS matmul. A per-row zero point is 1-D over x's rows."""
    values = widen(x).astype(np.float64)
    if zero_point is None:
        return values
    zp = widen(zero_point).astype(np.float64)
    if per_row and zp.size > 1:
        zp = zp.reshape(-1, 1)
    return values - zp


class _MatMulLike(OpDef):
    fusion = FusionClass.COMPLEX
    _a, _b = 0, 1  # input positions of the two matrices

    def cost(self, ctx):
        base = OpDef.cost(self, ctx)
        a, out = ctx.input_type(self._a), ctx.node.outputs[0].type
        if a is None or not a.is_static or not isinstance(out, TensorType) or not out.is_static:
            return base
        return Cost(2 * out.numel() * a.shape[-1], base.bytes_read, base.bytes_written)

    def _shape(self, ctx):
        a, b = ctx.input_type(self._a), ctx.input_type(self._b)
        return matmul_shape(None if a is None else a.shape, None if b is None else b.shape)


@register
class MatMulInteger(_MatMulLike):
    """int32 (A - a_zero_point) @ (B - b_zero_point); a_zero_point may be per row of A, b_zero_point per column."""

    op_type = "MatMulInteger"

    def infer(self, ctx):
        return [TensorType(np.int32, self._shape(ctx))]

    def compute(self, ctx, a, b, a_zero_point=None, b_zero_point=None):
        product = np.matmul(_centered(a, a_zero_point, True), _centered(b, b_zero_point, False))
        return product.astype(np.int64).astype(np.int32)  # int32 accumulation wraps


@register
class QLinearMatMul(_MatMulLike):
    """Quantized MatMul: y = quantize((a - a_zp) @ (b - b_zp) * a_scale * b_scale / y_scale) + y_zp.

    Scales may be per row of a and per column of b. The requantization multiplier is formed in the scales'
    dtype (float16 scales give a float16 multiplier), as runtimes do.
    """

    op_type = "QLinearMatMul"
    _a, _b = 0, 3

    def infer(self, ctx):
        zp = ctx.input_type(7) or ctx.input_type(0)
        return [TensorType(None if zp is None else zp.dtype, self._shape(ctx))]

    def compute(self, ctx, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point=None):
        product = np.matmul(_centered(a, a_zero_point, True), _centered(b, b_zero_point, False))
        if a_scale.size > 1:
            a_scale = a_scale.reshape(-1, 1)
        with np.errstate(all="ignore"):
            multiplier = widen(a_scale * b_scale / y_scale) if a_scale.dtype == b_scale.dtype == y_scale.dtype \
                else widen(a_scale) * widen(b_scale) / widen(y_scale)
            values = product * multiplier.astype(np.float64)
        dtype = a.dtype if y_zero_point is None else y_zero_point.dtype
        if not is_float(dtype):
            values = np.rint(values)  # before adding the zero point, as QuantizeLinear (and runtimes) do
        if y_zero_point is not None:
            values = values + widen(y_zero_point).astype(np.float64)
        return saturate_to(values, dtype)
