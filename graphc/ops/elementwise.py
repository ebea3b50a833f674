"""Elementwise ops: unary math, activations, arithmetic, comparisons, logic, bitwise ops, Cast/CastLike/BitCast.

Dtype rules (ONNX's, which the conformance suite checks exactly):

- the result has the first input's dtype (Pow: the base's, whatever the exponent's), bool for comparisons,
  IsNaN, IsInf and the logical ops, and the ``to`` dtype for Cast/BitCast;
- math on 16-bit and 8-bit floats (float16, bfloat16, float8) is evaluated in float32 and rounded back once:
  ml_dtypes' types lack several ufuncs, and float32 evaluation is what runtimes do;
- integer Div truncates towards zero (C semantics), integer Mod follows the divisor's sign unless ``fmod=1``;
  integer division by zero yields 0 instead of numpy's warning.

Floating-point exceptions (overflow in exp, 0/0...) are expected and silenced: ONNX defines the IEEE results.
:func:`cast_array` is the one conversion routine; the quantization ops reuse it.
"""

from __future__ import annotations

import functools
import math

import ml_dtypes
import numpy as np
import onnx

from ..ir.types import TensorType, dtype_from_onnx
from .registry import REQUIRED, FusionClass, OpDef, elementwise, elementwise_infer, register

# -- dtype helpers ------------------------------------------------------------------------------------------------

#: numpy dtypes that ml_dtypes adds (low-precision floats and sub-byte integers); numpy's own casts and ufuncs
#: do not always handle them, so they go through float32 (which holds each of their values exactly).
ML_DTYPES = frozenset(np.dtype(getattr(ml_dtypes, name)) for name in (
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn", "float6_e2m3fn", "float6_e3m2fn", "int4", "uint4", "int2", "uint2",
))
#: the float8 types Cast's (and QuantizeLinear's) ``saturate`` attribute applies to
SATURATING_FLOAT8 = frozenset(np.dtype(getattr(ml_dtypes, name)) for name in (
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
))
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)
_NARROW_FLOATS = frozenset({np.dtype(np.float16)} | {d for d in ML_DTYPES if "float" in d.name})


def is_float(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is a floating-point type, ml_dtypes' included."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or dtype in _NARROW_FLOATS


def widen(x: np.ndarray) -> np.ndarray:
    """``x`` in a dtype numpy computes well in: float32 for narrow floats and sub-byte ints, else unchanged."""
    if x.dtype in _NARROW_FLOATS or x.dtype in ML_DTYPES:
        return x.astype(np.float32)
    return x


# -- Cast -------------------------------------------------------------------------------------------------------

def _number_to_string(x: np.ndarray) -> np.ndarray:
    """Numbers as ONNX strings: numpy's shortest round-trip decimal, with ONNX's spellings of NaN and infinities."""
    special = {"nan": "NaN", "inf": "INF", "-inf": "-INF"}
    texts = [special.get(str(v), str(v)) for v in widen(x).ravel()]
    return np.array(texts, dtype=object).reshape(x.shape)


def _string_to_number(x: np.ndarray, to: np.dtype) -> np.ndarray:
    """Parse strings ("1.5", "-INF", "NaN", "1e-7", "42") into float64, or int64 for integer targets."""
    texts = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in x.ravel()]
    if to.kind in "iu" or to in ML_DTYPES and "int" in to.name:
        values = [int(t) if t.strip().lstrip("+-").isdigit() else int(float(t)) for t in texts]
        return np.array(values, dtype=np.int64).reshape(x.shape)
    if to == np.bool_:
        return np.array([float(t) != 0 for t in texts], dtype=np.bool_).reshape(x.shape)
    return np.array([float(t) for t in texts], dtype=np.float64).reshape(x.shape)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float -> float8e8m0 (a bare power-of-two exponent, bias 127, 0xFF = NaN).

    The float32 exponent field is the result; ``round_mode`` says what a nonzero mantissa does to it: "down"
    drops it, "up" adds one, "nearest" adds one from half upward (a half tie on a zero exponent stays).
    ``saturate`` stops the increment at the largest finite code (0xFE) instead of overflowing into NaN.
    The sign is ignored: e8m0 has none.
    """
    bits = np.array(x, dtype=np.float32, order="C").view(np.uint32)  # a copy: ascontiguousarray would make 0-d 1-d
    exponent = ((bits >> 23) & 0xFF).astype(np.uint16)
    mantissa = bits & 0x7FFFFF
    if round_mode == "up":
        bump = mantissa != 0
    elif round_mode == "nearest":
        bump = (mantissa >= 0x400000) & ((mantissa != 0x400000) | (exponent > 0))
    elif round_mode == "down":
        bump = np.zeros(bits.shape, dtype=bool)
    else:
        raise ValueError(f"unknown round_mode {round_mode!r} (expected 'up', 'down' or 'nearest')")
    special = exponent == 0xFF  # NaN and infinities
    if saturate:
        bump &= exponent < 0xFE
    exponent = np.where(special, 0xFF, np.minimum(exponent + bump, 0xFF))
    return exponent.astype(np.uint8).view(E8M0)


def cast_array(x: np.ndarray, to, *, saturate: bool = True, round_mode: str = "up") -> np.ndarray:
    """Convert ``x`` to dtype ``to`` the way ONNX Cast does.

    Floats to integers truncate towards zero and wrap (int4/int2 included); ``saturate`` clamps out-of-range
    values (and infinities) to the largest finite float8 value instead of producing NaN/inf; float4/float6
    always saturate; strings are parsed and printed (object arrays of str).
    """
    to = np.dtype(to)
    x = np.asarray(x)
    if to == object:
        return x.astype(object) if x.dtype == object or x.dtype.kind in "US" else _number_to_string(x)
    if x.dtype == object or x.dtype.kind in "US":
        x = _string_to_number(x, to)
    if x.dtype == to:
        return x
    with np.errstate(all="ignore"):
        if to == E8M0:
            return _to_e8m0(widen(x), saturate, round_mode)
        if x.dtype in ML_DTYPES:  # float32 holds every value of these exactly
            x = x.astype(np.float32)
            if x.dtype == to:
                return x
        if to in ML_DTYPES and x.dtype.kind == "b":
            x = x.astype(np.float32)
        if to in SATURATING_FLOAT8 and saturate:
            if not is_float(x.dtype):
                x = x.astype(np.float64)
            limit = float(ml_dtypes.finfo(to).max)
            return np.clip(x, -limit, limit).astype(to)
        return x.astype(to)


def _to_dtype(to) -> np.dtype:
    """Cast's ``to``: an ONNX dtype code (opset 6+) or a type name such as "FLOAT" (opset 1)."""
    if isinstance(to, str):
        to = onnx.TensorProto.DataType.Value(to.upper())
    return dtype_from_onnx(int(to))


def _shape_of(ctx, i: int):
    t = ctx.input_type(i)
    return None if t is None else t.shape


@register
class Cast(OpDef):
    op_type = "Cast"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 1
    attrs = {"to": REQUIRED}

    def infer(self, ctx):
        return [TensorType(_to_dtype(ctx.attrs["to"]), _shape_of(ctx, 0))]

    def compute(self, ctx, x):
        return cast_array(x, _to_dtype(ctx.attrs["to"]), saturate=bool(ctx.attr("saturate", 1)),
                          round_mode=ctx.attr("round_mode", "up"))


@register
class CastLike(OpDef):
    op_type = "CastLike"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 1

    def infer(self, ctx):
        target = ctx.input_type(1)
        return [TensorType(None if target is None else target.dtype, _shape_of(ctx, 0))]

    def compute(self, ctx, x, target):
        return cast_array(x, target.dtype, saturate=bool(ctx.attr("saturate", 1)),
                          round_mode=ctx.attr("round_mode", "up"))


@register
class BitCast(OpDef):
    """Reinterpret the bits of each element as another type of the same width (opset 26)."""

    op_type = "BitCast"
    fusion = FusionClass.ELEMENTWISE
    attrs = {"to": REQUIRED}

    def infer(self, ctx):
        return [TensorType(_to_dtype(ctx.attrs["to"]), _shape_of(ctx, 0))]

    def compute(self, ctx, x):
        to = _to_dtype(ctx.attrs["to"])
        if to.itemsize != x.dtype.itemsize or to == object:
            raise ctx.fail(f"cannot reinterpret {x.dtype} as {to}: BitCast needs types of the same width")
        return (x if x.flags.c_contiguous else x.copy()).view(to)  # ascontiguousarray would make 0-d 1-d


# -- unary math and activations ------------------------------------------------------------------------------------

def _math(fn):
    """An elementwise compute evaluating ``fn(x, attrs)`` in float32 for narrow floats, in the input's dtype."""
    def compute(ctx, x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(widen(x), ctx.attrs)).astype(x.dtype, copy=False)
    return compute


_ERF_TAYLOR_TERMS = 40  # enough for |x| < 2: the 40th term is below 1e-25
_TWO_OVER_SQRT_PI = 2 / math.sqrt(math.pi)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (numpy has none).

    Small or float64 arrays go through libm (``math.erf``, exact to the last bit). Large narrower arrays -- the
    GELU of a transformer -- are vectorised: the Maclaurin series for |x| < 2, and for |x| >= 2 the Chebyshev
    fit of erfc from Numerical Recipes (relative error < 1.2e-7 in erfc, so < 1e-9 in erf there): both far
    below float32's resolution.
    """
    exact = np.asarray(x).dtype == np.float64 or np.size(x) < 4096
    x = np.asarray(x, dtype=np.float64)
    if exact:
        return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)
    a = np.abs(x)
    near = np.minimum(a, 2.0)
    sq = near * near
    term, total = near.copy(), near.copy()
    for n in range(1, _ERF_TAYLOR_TERMS):
        term *= -sq / n
        total += term / (2 * n + 1)
    series = _TWO_OVER_SQRT_PI * total
    t = 1 / (1 + 0.5 * a)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (
        0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    tail = 1 - t * np.exp(-a * a + poly)
    return np.copysign(np.where(a < 2, series, tail), x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0, x)  # log(1 + e^x) without overflow for large x


def _gelu(x, a):
    if a.get("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _hard_sigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0, 1)


# FLOPs per element: 1 for arithmetic, comparisons and selects; 4 for a transcendental function; activations
# count what they are made of.
_TRANSCENDENTAL = 4

elementwise("Abs", _math(lambda x, a: np.abs(x)))
elementwise("Neg", _math(lambda x, a: np.negative(x)))
elementwise("Sign", _math(lambda x, a: np.sign(x)))
elementwise("Ceil", _math(lambda x, a: np.ceil(x)))
elementwise("Floor", _math(lambda x, a: np.floor(x)))
elementwise("Round", _math(lambda x, a: np.round(x)))  # half to even, as ONNX
elementwise("Reciprocal", _math(lambda x, a: 1 / x))
elementwise("Sqrt", _math(lambda x, a: np.sqrt(x)))
elementwise("Exp", _math(lambda x, a: np.exp(x)), flops=_TRANSCENDENTAL)
elementwise("Log", _math(lambda x, a: np.log(x)), flops=_TRANSCENDENTAL)
elementwise("Erf", _math(lambda x, a: _erf(x)), flops=_TRANSCENDENTAL)
for _name, _fn in [("Sin", np.sin), ("Cos", np.cos), ("Tan", np.tan), ("Asin", np.arcsin), ("Acos", np.arccos),
                   ("Atan", np.arctan), ("Sinh", np.sinh), ("Cosh", np.cosh), ("Tanh", np.tanh),
                   ("Asinh", np.arcsinh), ("Acosh", np.arccosh), ("Atanh", np.arctanh)]:
    elementwise(_name, _math(lambda x, a, fn=_fn: fn(x)), flops=_TRANSCENDENTAL)

elementwise("Relu", _math(lambda x, a: np.maximum(x, 0)))
elementwise("LeakyRelu", _math(lambda x, a: np.where(x < 0, a["alpha"] * x, x)), flops=2, attrs={"alpha": 0.01})
elementwise("ThresholdedRelu", _math(lambda x, a: np.where(x > a["alpha"], x, 0)), attrs={"alpha": 1.0})
elementwise("Elu", _math(lambda x, a: np.where(x < 0, a["alpha"] * np.expm1(x), x)), flops=_TRANSCENDENTAL + 2,
            attrs={"alpha": 1.0})
elementwise("Selu", _math(lambda x, a: a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(x))),
            flops=_TRANSCENDENTAL + 3)
elementwise("Celu", _math(lambda x, a: np.maximum(x, 0) + np.minimum(0, a["alpha"] * np.expm1(x / a["alpha"]))),
            flops=_TRANSCENDENTAL + 4, attrs={"alpha": 1.0})
elementwise("Sigmoid", _math(lambda x, a: _sigmoid(x)), flops=_TRANSCENDENTAL + 2)
elementwise("HardSigmoid", _math(lambda x, a: _hard_sigmoid(x, a["alpha"], a["beta"])), flops=3,
            attrs={"alpha": 0.2, "beta": 0.5})
elementwise("HardSwish", _math(lambda x, a: x * _hard_sigmoid(x, 1 / 6, 0.5)), flops=4)
elementwise("Softplus", _math(lambda x, a: _softplus(x)), flops=2 * _TRANSCENDENTAL)
elementwise("Softsign", _math(lambda x, a: x / (1 + np.abs(x))), flops=3)
elementwise("Mish", _math(lambda x, a: x * np.tanh(_softplus(x))), flops=3 * _TRANSCENDENTAL + 1)
elementwise("Swish", _math(lambda x, a: x * _sigmoid(a["alpha"] * x)), flops=_TRANSCENDENTAL + 4,
            attrs={"alpha": 1.0})
elementwise("Gelu", _math(_gelu), flops=_TRANSCENDENTAL + 5, attrs={"approximate": "none"})
elementwise("Shrink", _math(lambda x, a: np.where(x < -a["lambd"], x + a["bias"],
                                                  np.where(x > a["lambd"], x - a["bias"], 0))),
            flops=3, attrs={"bias": 0.0, "lambd": 0.5})

elementwise("IsNaN", lambda x: np.isnan(widen(x)), out_dtype=np.bool_)


def _is_inf(ctx, x):
    x = widen(x)
    positive, negative = bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1))
    return np.isinf(x) & ((x > 0) & positive | (x < 0) & negative)


elementwise("IsInf", _is_inf, out_dtype=np.bool_)


@register
class Clip(OpDef):
    """Clamp to [min, max]: attributes before opset 11, optional inputs from 11. min > max gives max."""

    op_type = "Clip"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 2

    def infer(self, ctx):
        t = ctx.input_type(0)
        return [None if t is None else TensorType(t.dtype, t.shape)]

    def compute(self, ctx, x, lo=None, hi=None):
        if ctx.opset < 11:
            lo, hi = ctx.attrs.get("min"), ctx.attrs.get("max")
        y = x
        if lo is not None:
            y = np.maximum(y, np.asarray(lo).astype(x.dtype))
        if hi is not None:
            y = np.minimum(y, np.asarray(hi).astype(x.dtype))
        return np.asarray(y, dtype=x.dtype)


# -- binary arithmetic ---------------------------------------------------------------------------------------------

def _same_dtype(fn):
    """An elementwise compute whose result keeps the first input's dtype (numpy may not promote anything)."""
    def compute(*inputs):
        with np.errstate(all="ignore"):
            return np.asarray(fn(*inputs)).astype(inputs[0].dtype, copy=False)
    return compute


def _div(a, b):
    if a.dtype.kind not in "iu":
        return a / b
    quotient = np.floor_divide(a, b)  # floors; ONNX truncates towards zero
    if a.dtype.kind == "i":
        quotient = quotient + ((quotient * b != a) & ((a < 0) != (b < 0)))
    return np.where(b == 0, 0, quotient)


def _mod(ctx, a, b):
    with np.errstate(all="ignore"):
        result = np.fmod(a, b) if ctx.attr("fmod", 0) else np.mod(a, b)
        if a.dtype.kind in "iu":
            result = np.where(b == 0, 0, result)
    return result.astype(a.dtype, copy=False)


def _pow(x, y):
    """x ** y in x's dtype, whatever y's (ONNX allows e.g. int32 ** float32 and float32 ** int64)."""
    with np.errstate(all="ignore"):
        if x.dtype.kind in "iu" and y.dtype.kind in "iub":
            if (y >= 0).all():  # exact integer power; negative exponents go through floats
                return np.power(x.astype(np.int64), y.astype(np.int64)).astype(x.dtype)
        if x.dtype.kind in "iu":
            return np.power(x.astype(np.float64), widen(y).astype(np.float64)).astype(x.dtype)
        return np.power(widen(x), widen(y)).astype(x.dtype)  # numpy's promotion: float32 ** int64 in float64


elementwise("Add", _same_dtype(np.add))
elementwise("Sub", _same_dtype(np.subtract))
elementwise("Mul", _same_dtype(np.multiply))
elementwise("Div", _same_dtype(_div))
elementwise("Mod", _mod, attrs={"fmod": 0})
elementwise("Pow", _pow, flops=_TRANSCENDENTAL)


@register
class PRelu(OpDef):
    """``x < 0 ? slope * x : x``; the slope broadcasts to x's shape (unidirectionally), the output is x-shaped.

    Before opset 7 a 1-D slope of length C applies along axis 1 (the channels), as in Caffe.
    """

    op_type = "PRelu"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 2

    @staticmethod
    def _legacy_slope_shape(x_rank: int, slope_shape: tuple) -> tuple | None:
        if x_rank > 2 and len(slope_shape) == 1:
            return (slope_shape[0],) + (1,) * (x_rank - 2)
        return None

    def infer(self, ctx):
        x = ctx.input_type(0)
        return [None if x is None else TensorType(x.dtype, x.shape)]

    def compute(self, ctx, x, slope):
        if ctx.opset < 7:
            legacy = self._legacy_slope_shape(x.ndim, slope.shape)
            if legacy is not None:
                slope = slope.reshape(legacy)
        with np.errstate(all="ignore"):
            return np.where(x < 0, slope * x, x).astype(x.dtype, copy=False)


# -- variadic ------------------------------------------------------------------------------------------------------

def _fold(ufunc):
    def compute(*inputs):
        with np.errstate(all="ignore"):
            return functools.reduce(ufunc, inputs).astype(inputs[0].dtype, copy=False)
    return compute


elementwise("Max", _fold(np.maximum))
elementwise("Min", _fold(np.minimum))
elementwise("Sum", _fold(np.add))
elementwise("Mean", lambda *xs: (_fold(np.add)(*xs) / len(xs)).astype(xs[0].dtype))


# -- comparisons, logic, bitwise -----------------------------------------------------------------------------------

def _compare(ufunc):
    return lambda a, b: ufunc(widen(a), widen(b))


for _name, _fn in [("Equal", np.equal), ("Greater", np.greater), ("GreaterOrEqual", np.greater_equal),
                   ("Less", np.less), ("LessOrEqual", np.less_equal)]:
    elementwise(_name, _compare(_fn), out_dtype=np.bool_)

elementwise("Not", np.logical_not, out_dtype=np.bool_)
elementwise("And", np.logical_and, out_dtype=np.bool_)
elementwise("Or", np.logical_or, out_dtype=np.bool_)
elementwise("Xor", np.logical_xor, out_dtype=np.bool_)
elementwise("BitwiseNot", np.invert)
elementwise("BitwiseAnd", np.bitwise_and)
elementwise("BitwiseOr", np.bitwise_or)
elementwise("BitwiseXor", np.bitwise_xor)
elementwise("BitShift", lambda ctx, x, n: (np.left_shift if ctx.attrs["direction"] == "LEFT" else np.right_shift)(
    x, n.astype(x.dtype)).astype(x.dtype), attrs={"direction": REQUIRED})


@register
class Where(OpDef):
    op_type = "Where"
    fusion = FusionClass.ELEMENTWISE
    flops_per_element = 1

    def infer(self, ctx):
        result = elementwise_infer(ctx)[0]
        branch = ctx.input_type(1) or ctx.input_type(2)
        if result is None or branch is None:
            return [None]
        return [TensorType(branch.dtype, result.shape)]

    def compute(self, ctx, condition, x, y):
        return np.where(condition, x, y).astype(x.dtype, copy=False)
