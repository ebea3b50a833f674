"""Scalar-or-vector arithmetic for the elementwise code generators, and the transcendental functions they need.

:class:`Lanes` wraps an ``ir.IRBuilder`` with a lane count ``width``: width 1 works on scalars, width W on
``<W x T>`` vectors; every helper (constants, compares, selects, intrinsics, polynomials) builds the right
type, so one op description serves both the vector main loop and the scalar remainder of a kernel.

float32 functions are pure arithmetic (no calls, so the loop and SLP vectorisers keep them in vector
registers), in the style of Cephes: range reduction, a polynomial, and selects for the special values:

- ``exp``: x = n ln2 + r (ln2 split in two), degree-6 polynomial, 2^n built in the exponent field in two
  halves so that results in the subnormal range and overflow to +inf come out as in libm; NaN passes through;
- ``log``: x = m 2^e with m in [sqrt(1/2), sqrt(2)) (subnormals rescaled first), degree-9 polynomial;
  log(0) = -inf, log(x < 0) = NaN, log(inf) = inf;
- ``expm1``: Taylor series on |x| < ln2/2 (where exp(x) - 1 would cancel), exp(x) - 1 elsewhere;
- ``log1p`` (for arguments >= 0 only; Softplus): log(1 + y) corrected by the rounding error of 1 + y;
- ``tanh``: odd polynomial on |x| < 0.625, 1 - 2 / (exp(2|x|) + 1) elsewhere;
- ``sigmoid``: 1 / (1 + exp(-x)), the reference's formula;
- ``erf``: the rational minimax approximation on [-4, 4] used by Eigen/XLA (measured: at most 7 ulp, relative
  error < 4e-7); ``erfc`` (argument >= 0, for Gelu's left tail): Numerical Recipes' Chebyshev form
  t exp(-z^2 + P(t)) (relative error < 1e-5 on [0, 12], then 0).

float64 functions go to the C library through LLVM's intrinsics (``llvm.exp.f64`` ...) or a declared libm
function (``erf``, ``expm1``, ``log1p``), one call per lane: the reference computes float64 with the same libm.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from ..kernel import F32, F64, I1, I8, I32, I64, Unsupported, llvm_type


def type_suffix(t: ir.Type) -> str:
    """LLVM's overload suffix of a type: f32, v16f32, i64..."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{type_suffix(t.element)}"
    if isinstance(t, ir.FloatType):
        return "f32"
    if isinstance(t, ir.DoubleType):
        return "f64"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    raise Unsupported(f"no intrinsic suffix for {t}")


class Lanes:
    """Arithmetic on ``width`` lanes at once (width 1: scalars) at the builder's position."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, width: int):
        self.module = module
        self.b = builder
        self.width = int(width)

    # -- types and constants -----------------------------------------------------------------------------
    def ty(self, scalar: ir.Type) -> ir.Type:
        return scalar if self.width == 1 else ir.VectorType(scalar, self.width)

    def of(self, dtype) -> ir.Type:
        """The lane type of a numpy dtype (bool is i8 holding 0 or 1)."""
        return self.ty(llvm_type(dtype))

    def const(self, scalar: ir.Type, value) -> ir.Constant:
        if isinstance(scalar, ir.IntType):
            value = int(value) & ((1 << scalar.width) - 1)
        else:
            value = float(value)
        c = ir.Constant(scalar, value)
        return c if self.width == 1 else ir.Constant(ir.VectorType(scalar, self.width), [c] * self.width)

    def dconst(self, dtype, value) -> ir.Constant:
        """A constant of numpy dtype ``dtype``, rounded to it first (float32(0.1), not 0.1)."""
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            value = float(np.asarray(value, dtype=np.float64).astype(dtype))
        return self.const(llvm_type(dtype), value)

    def f(self, x: ir.Value, value: float) -> ir.Constant:
        """A float constant of ``x``'s element type, rounded to it."""
        elem = self.elem(x.type)
        if isinstance(elem, ir.FloatType):
            value = float(np.float32(value))
        return self.const(elem, value)

    @staticmethod
    def elem(t: ir.Type) -> ir.Type:
        return t.element if isinstance(t, ir.VectorType) else t

    def splat(self, scalar: ir.Value) -> ir.Value:
        if self.width == 1:
            return scalar
        if isinstance(scalar, ir.Constant):
            return ir.Constant(ir.VectorType(scalar.type, self.width), [scalar] * self.width)
        vt = ir.VectorType(scalar.type, self.width)
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), scalar, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                     ir.Constant(ir.VectorType(I32, self.width), [0] * self.width))

    # -- calls -------------------------------------------------------------------------------------------
    def declare(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ret, args), name=name)
        return fn

    def intrinsic(self, base: str, *args: ir.Value, ret: ir.Type | None = None) -> ir.Value:
        """``llvm.<base>.<suffix of args[0]>``(args) returning ``ret`` (default: args[0]'s type)."""
        t = args[0].type
        fn = self.declare(f"llvm.{base}.{type_suffix(t)}", ret or t, [a.type for a in args])
        return self.b.call(fn, list(args))

    def libm(self, name: str, *args: ir.Value) -> ir.Value:
        """A C library function of doubles (``erf``, ``pow``...), called once per lane."""
        fn = self.declare(name, F64, [F64] * len(args))
        if self.width == 1:
            return self.b.call(fn, list(args))
        out = ir.Constant(ir.VectorType(F64, self.width), ir.Undefined)
        for lane in range(self.width):
            idx = ir.Constant(I32, lane)
            r = self.b.call(fn, [self.b.extract_element(a, idx) for a in args])
            out = self.b.insert_element(out, r, idx)
        return out

    # -- float helpers -----------------------------------------------------------------------------------
    def fma(self, a, b_, c):
        """a * b + c, fused where the target has FMA (llvm.fmuladd)."""
        return self.intrinsic("fmuladd", a, b_, c)

    def poly(self, x, coeffs) -> ir.Value:
        """Horner's scheme, highest degree first."""
        acc = self.f(x, coeffs[0])
        for c in coeffs[1:]:
            acc = self.fma(acc, x, self.f(x, c))
        return acc

    def isnan(self, x):
        return self.b.fcmp_unordered("!=", x, x)

    def select(self, cond, a, b_):
        return self.b.select(cond, a, b_)

    def fabs(self, x):
        return self.intrinsic("fabs", x)

    def copysign(self, mag, sign):
        return self.intrinsic("copysign", mag, sign)

    def np_maximum(self, a, b_):
        """numpy's maximum: ``a >= b or isnan(a) ? a : b`` (NaN in either input gives NaN)."""
        take_a = self.b.or_(self.b.fcmp_ordered(">=", a, b_), self.isnan(a))
        return self.b.select(take_a, a, b_)

    def np_minimum(self, a, b_):
        take_a = self.b.or_(self.b.fcmp_ordered("<=", a, b_), self.isnan(a))
        return self.b.select(take_a, a, b_)

    def bits(self, x):
        return self.b.bitcast(x, self.ty(I32 if self.elem(x.type) == F32 else I64))

    def from_bits(self, i, ftype):
        return self.b.bitcast(i, self.ty(ftype))


# -- float32 ----------------------------------------------------------------------------------------------------

_LOG2E = 1.44269504088896341
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLY = [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1]
_LOG_POLY = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1]
_TANH_POLY = [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1]
_ERF_NUM = [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
            -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02]
_ERF_DEN = [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
            -1.42647390514189e-02]
_ERFC_POLY = [0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806, 0.09678418,
              0.37409196, 1.00002368, -1.26551223]


def _pow2i(ln: Lanes, n):
    """2^n as float32 for integer lanes n in [-126, 127] (built in the exponent field)."""
    b = ln.b
    return ln.from_bits(b.shl(b.add(n, ln.const(I32, 127)), ln.const(I32, 23)), F32)


def exp_f32(ln: Lanes, x):
    b = ln.b
    xc = ln.select(b.fcmp_ordered(">", x, ln.f(x, 89.0)), ln.f(x, 89.0), x)
    xc = ln.select(b.fcmp_ordered("<", xc, ln.f(x, -104.0)), ln.f(x, -104.0), xc)
    xc = ln.select(ln.isnan(x), ln.f(x, 0.0), xc)
    nf = ln.intrinsic("rint", b.fmul(xc, ln.f(x, _LOG2E)))
    r = ln.fma(nf, ln.f(x, -_LN2_HI), xc)
    r = ln.fma(nf, ln.f(x, -_LN2_LO), r)
    p = ln.poly(r, _EXP_POLY)
    p = ln.fma(b.fmul(p, r), r, b.fadd(r, ln.f(x, 1.0)))
    n = b.fptosi(nf, ln.ty(I32))
    half = b.ashr(n, ln.const(I32, 1))  # 2^n = 2^half * 2^(n - half): each factor stays a normal number
    y = b.fmul(b.fmul(p, _pow2i(ln, half)), _pow2i(ln, b.sub(n, half)))
    return ln.select(ln.isnan(x), x, y)


def expm1_f32(ln: Lanes, x):
    b = ln.b
    small = b.fcmp_ordered("<", ln.fabs(x), ln.f(x, 0.34657359))
    # x + x^2/2 + ... + x^9/9!: the last term is below float32's resolution on |x| < ln2/2
    coeffs = [1 / 362880, 1 / 40320, 1 / 5040, 1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5]
    series = ln.fma(b.fmul(ln.poly(x, coeffs), x), x, x)
    big = b.fsub(exp_f32(ln, x), ln.f(x, 1.0))
    return ln.select(small, series, big)


def log_f32(ln: Lanes, x):
    b = ln.b
    tiny = b.fcmp_ordered("<", x, ln.f(x, 1.17549435e-38))
    xs = ln.select(tiny, b.fmul(x, ln.f(x, 8388608.0)), x)  # subnormals: scale by 2^23 first
    bits = ln.bits(xs)
    e = b.sub(b.lshr(bits, ln.const(I32, 23)), ln.const(I32, 127))
    e = b.sub(e, ln.select(tiny, ln.const(I32, 23), ln.const(I32, 0)))
    m = ln.from_bits(b.or_(b.and_(bits, ln.const(I32, 0x007FFFFF)), ln.const(I32, 0x3F800000)), F32)
    big = b.fcmp_ordered(">", m, ln.f(x, 1.41421356237))
    m = ln.select(big, b.fmul(m, ln.f(x, 0.5)), m)
    e = b.add(e, b.zext(big, ln.ty(I32)))
    ef = b.sitofp(e, ln.ty(F32))
    t = b.fsub(m, ln.f(x, 1.0))
    z = b.fmul(t, t)
    y = b.fmul(b.fmul(t, z), ln.poly(t, _LOG_POLY))
    y = ln.fma(ef, ln.f(x, _LN2_LO), y)
    y = ln.fma(z, ln.f(x, -0.5), y)
    y = b.fadd(t, y)
    y = ln.fma(ef, ln.f(x, _LN2_HI), y)
    inf = ln.f(x, float("inf"))
    y = ln.select(b.fcmp_ordered("==", x, inf), inf, y)
    y = ln.select(b.fcmp_ordered("==", x, ln.f(x, 0.0)), ln.f(x, float("-inf")), y)
    return ln.select(b.fcmp_unordered("<", x, ln.f(x, 0.0)), ln.f(x, float("nan")), y)


def log1p_nonneg_f32(ln: Lanes, y):
    """log(1 + y) for y >= 0 (or NaN): log(u) - ((u - 1) - y) / u with u = 1 + y rounded."""
    b = ln.b
    u = b.fadd(y, ln.f(y, 1.0))
    correction = b.fdiv(b.fsub(b.fsub(u, ln.f(y, 1.0)), y), u)
    r = b.fsub(log_f32(ln, u), correction)
    r = ln.select(b.fcmp_ordered("==", u, ln.f(y, float("inf"))), u, r)
    return ln.select(b.fcmp_ordered("==", u, ln.f(y, 1.0)), y, r)


def tanh_f32(ln: Lanes, x):
    b = ln.b
    a = ln.fabs(x)
    z = b.fmul(x, x)
    small = ln.fma(b.fmul(ln.poly(z, _TANH_POLY), z), x, x)
    e = exp_f32(ln, b.fmul(a, ln.f(x, 2.0)))
    large = b.fsub(ln.f(x, 1.0), b.fdiv(ln.f(x, 2.0), b.fadd(e, ln.f(x, 1.0))))
    large = ln.copysign(large, x)
    return ln.select(b.fcmp_ordered("<", a, ln.f(x, 0.625)), small, large)


def sigmoid_f32(ln: Lanes, x):
    b = ln.b
    one = ln.f(x, 1.0)
    return b.fdiv(one, b.fadd(one, exp_f32(ln, b.fneg(x))))


def erf_f32(ln: Lanes, x):
    b = ln.b
    xc = ln.select(b.fcmp_ordered(">", x, ln.f(x, 4.0)), ln.f(x, 4.0), x)
    xc = ln.select(b.fcmp_ordered("<", xc, ln.f(x, -4.0)), ln.f(x, -4.0), xc)
    x2 = b.fmul(xc, xc)
    num = b.fmul(ln.poly(x2, _ERF_NUM), xc)
    r = b.fdiv(num, ln.poly(x2, _ERF_DEN))  # NaN stays NaN through the clamps' selects
    # erf(x) = 2x/sqrt(pi) to float32 precision on tiny |x|, where the rational form loses subnormal bits
    linear = b.fmul(x, ln.f(x, 1.1283791670955126))
    return ln.select(b.fcmp_ordered("<", ln.fabs(x), ln.f(x, 1e-20)), linear, r)


def erfc_nonneg_f32(ln: Lanes, z):
    """erfc(z) for z >= 0 with a small relative error (no cancellation in the tail)."""
    b = ln.b
    one = ln.f(z, 1.0)
    t = b.fdiv(one, ln.fma(z, ln.f(z, 0.5), one))
    arg = ln.fma(b.fneg(z), z, ln.poly(t, _ERFC_POLY))
    return b.fmul(t, exp_f32(ln, arg))


# -- dispatch by element type -----------------------------------------------------------------------------------

def _f64_or(ln: Lanes, x, f32_fn, intrinsic: str | None = None, libm: str | None = None):
    elem = Lanes.elem(x.type)
    if elem == F32:
        return f32_fn(ln, x)
    if elem == F64:
        return ln.intrinsic(intrinsic, x) if intrinsic else ln.libm(libm, x)
    raise Unsupported(f"math function on {elem}")


def exp(ln, x):
    return _f64_or(ln, x, exp_f32, intrinsic="exp")


def log(ln, x):
    return _f64_or(ln, x, log_f32, intrinsic="log")


def tanh(ln, x):
    return _f64_or(ln, x, tanh_f32, libm="tanh")


def erf(ln, x):
    return _f64_or(ln, x, erf_f32, libm="erf")


def expm1(ln, x):
    return _f64_or(ln, x, expm1_f32, libm="expm1")


def log1p_nonneg(ln, x):
    return _f64_or(ln, x, log1p_nonneg_f32, libm="log1p")


def erfc_nonneg(ln, x):
    return _f64_or(ln, x, erfc_nonneg_f32, libm="erfc")


def sigmoid(ln, x):
    if Lanes.elem(x.type) == F32:
        return sigmoid_f32(ln, x)
    one = ln.f(x, 1.0)
    return ln.b.fdiv(one, ln.b.fadd(one, exp(ln, ln.b.fneg(x))))


__all__ = ["Lanes", "type_suffix", "exp", "log", "tanh", "erf", "expm1", "log1p_nonneg", "erfc_nonneg",
           "sigmoid", "I1", "I8", "I64"]
