"""The elementwise ops as LLVM values: one function per ONNX op, on scalars or ``<W x T>`` vectors alike.

:func:`emit_op` computes one node's outputs from its inputs' values (already loaded, broadcast and of equal
lane count) through :class:`~.mathfns.Lanes`. It knows nothing of memory or loops: the pointwise kernels
(:mod:`.pointwise`) and GEMM/conv epilogues (:mod:`.epilogue`) call it for every node of a body.

Semantics follow the reference (graphc/ops/elementwise.py) exactly, up to float rounding of transcendental
functions (see :mod:`.mathfns`). Values live in their storage type: bool is i8 holding 0 or 1.

Handled (float32/float64 unless said otherwise):

- arithmetic: Add Sub Mul (also every int dtype, wrapping), Div (ints: truncation towards zero, x/0 = 0,
  INT_MIN/-1 wraps), Mod (ints: divisor's sign, or fmod=1 C remainder, x%0 = 0; floats: numpy's mod or fmod),
  Pow (float base: exponent constant 0, 1, 2, 3, 4, -1 inline, otherwise libm ``pow`` in float64 per lane),
  Neg Abs (signed ints too), Sum Max Min (every numeric dtype) Mean (floats), Reciprocal Sqrt Floor Ceil
  Round (half to even) Sign;
- activations: Relu (signed ints too) LeakyRelu PRelu (opset >= 7) Elu Selu Celu ThresholdedRelu Shrink
  HardSigmoid HardSwish Sigmoid Swish Tanh Exp Log Erf Gelu (both approximations) Softplus Softsign Mish Clip
  (every numeric dtype; attributes before opset 11, inputs from 11);
- comparisons Equal Less Greater LessOrEqual GreaterOrEqual (same-dtype operands, bool included for Equal),
  IsNaN IsInf, Where, logic Not And Or Xor (bool), BitwiseNot/And/Or/Xor (ints), BitShift (unsigned);
- Cast/CastLike between float32, float64, bool and the integer dtypes, as numpy's ``astype`` on x86 (floats
  to int8..int64/uint8/uint16 truncate, out-of-range and NaN give what cvttss2si gives); Identity, Dropout
  in inference mode (its mask all ones), BatchNormalization in inference mode (see :func:`batchnorm_operands`).

Declined (:class:`Unsupported`): other dtypes (float16, strings: they have no storage anyway), mixed operand
dtypes an ONNX op does not allow, integer Pow/Floor/Ceil/Round/Mean, float -> uint32/uint64 casts (numpy's
result depends on the instruction set), signed BitShift, legacy PRelu slopes (opset < 7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ....ir.graph import Node
from ....ir.types import TensorType
from ....ops import OpContext, lookup
from ..kernel import F32, F64, I1, I8, I32, I64, Unsupported
from . import mathfns as m
from .mathfns import Lanes

_NUMERIC = frozenset(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                            np.uint8, np.uint16, np.uint32, np.uint64, np.bool_))


@dataclass
class OpCall:
    """One node as the op functions see it: resolved attributes, dtypes, compile-time input values."""

    node: Node
    attrs: dict
    opset: int
    in_dtypes: list  # np.dtype or None (absent optional input)
    out_dtypes: list
    consts: list = field(default_factory=list)  # np.ndarray or None per input

    @property
    def out(self) -> np.dtype:
        return self.out_dtypes[0]

    def scalar_const(self, i: int):
        """Input i's value when it is a compile-time constant with a single distinct value, else None."""
        c = self.consts[i] if i < len(self.consts) else None
        if c is None or c.size == 0:
            return None
        flat = c.reshape(-1)
        if not (flat == flat[0]).all() and not (np.isnan(flat).all() if flat.dtype.kind == "f" else False):
            return None
        return flat[0]


def _dtype_of(v) -> np.dtype | None:
    if v is None:
        return None
    t = v.type
    if not isinstance(t, TensorType) or t.dtype is None:
        raise Unsupported(f"{v.name!r} has no known dtype")
    return np.dtype(t.dtype)


def op_call(node: Node, const_of: Callable = lambda v: None) -> OpCall:
    """The :class:`OpCall` of ``node``; ``const_of(value)`` gives a compile-time value or None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
        raise Unsupported(f"{node.op_type} is not an elementwise op this backend generates")
    opdef = lookup(node.domain, node.op_type)
    ctx = OpContext(node, opdef)
    ins = [_dtype_of(v) for v in node.inputs]
    outs = [_dtype_of(v) for v in node.outputs]
    for d in ins + outs:
        if d is not None and d not in _NUMERIC:
            raise Unsupported(f"{node.op_type}: dtype {d}")
    consts = [None if v is None else const_of(v) for v in node.inputs]
    return OpCall(node, ctx.attrs, node.opset or 1, ins, outs, [None if c is None else np.asarray(c) for c in consts])


def emit_op(ln: Lanes, call: OpCall, args: list) -> list:
    """The node's output values (one per output; None for outputs it does not compute) from its inputs'."""
    result = OPS[call.node.op_type](ln, call, args)
    return result if isinstance(result, list) else [result]


# -- dtype predicates --------------------------------------------------------------------------------------------

def _kind(d: np.dtype) -> str:
    return "b" if d == np.bool_ else d.kind


def _same(call: OpCall, kinds: str, n: int | None = None) -> np.dtype:
    """Check that the (present) inputs share the output's dtype, of one of ``kinds``; return it."""
    d = call.out
    present = [x for x in call.in_dtypes[:n] if x is not None]
    if any(x != d for x in present):
        raise Unsupported(f"{call.node.op_type}: mixed dtypes {call.in_dtypes} -> {d}")
    if _kind(d) not in kinds:
        raise Unsupported(f"{call.node.op_type}: dtype {d}")
    return d


def _float(call: OpCall, n: int | None = 1) -> np.dtype:
    return _same(call, "f", n)


def _truth(ln: Lanes, v):
    """A bool (i8) value as i1 lanes."""
    return ln.b.icmp_unsigned("!=", v, ln.const(I8, 0))


def _bool(ln: Lanes, c):
    """i1 lanes as bool (i8 0/1)."""
    return ln.b.zext(c, ln.ty(I8))


def _cmp(ln: Lanes, d: np.dtype, op: str, a, b_):
    if d.kind == "f":
        return ln.b.fcmp_ordered(op, a, b_)
    if d.kind == "i":
        return ln.b.icmp_signed(op, a, b_)
    return ln.b.icmp_unsigned(op, a, b_)


def _fc(ln: Lanes, d: np.dtype, value):
    """A constant in dtype d (floats rounded to d, as numpy does with a Python float and a float32 array)."""
    return ln.dconst(d, value)


# -- arithmetic --------------------------------------------------------------------------------------------------

def _binary(fop, iop):
    def emit(ln, call, args):
        d = _same(call, "fiu")
        a, b_ = args
        return getattr(ln.b, fop if d.kind == "f" else iop)(a, b_)
    return emit


def _div(ln, call, args):
    d = _same(call, "fiu")
    a, b_ = args
    b = ln.b
    if d.kind == "f":
        return b.fdiv(a, b_)
    zero, one = _fc(ln, d, 0), _fc(ln, d, 1)
    is_zero = b.icmp_unsigned("==", b_, zero)
    if d.kind == "u":
        return b.select(is_zero, zero, b.udiv(a, b.select(is_zero, one, b_)))
    minus_one = b.icmp_signed("==", b_, _fc(ln, d, -1))
    safe = b.select(b.or_(is_zero, minus_one), one, b_)  # x / 0 and INT_MIN / -1 are undefined in LLVM
    q = b.select(minus_one, b.sub(zero, a), b.sdiv(a, safe))
    return b.select(is_zero, zero, q)


def _mod(ln, call, args):
    d = _same(call, "fiu")
    a, b_ = args
    b = ln.b
    fmod = bool(call.attrs.get("fmod", 0))
    if d.kind == "f":
        r = b.frem(a, b_)
        if fmod:
            return r
        # numpy's mod: the remainder takes the divisor's sign; a zero remainder is copysign(0, divisor)
        fix = b.and_(b.fcmp_ordered("!=", r, _fc(ln, d, 0)),
                     b.xor(b.fcmp_ordered("<", r, _fc(ln, d, 0)), b.fcmp_ordered("<", b_, _fc(ln, d, 0))))
        r2 = b.select(fix, b.fadd(r, b_), r)
        is_zero = b.fcmp_ordered("==", r, _fc(ln, d, 0))
        return b.select(is_zero, ln.copysign(_fc(ln, d, 0), b_), r2)
    zero, one = _fc(ln, d, 0), _fc(ln, d, 1)
    is_zero = b.icmp_unsigned("==", b_, zero)
    if d.kind == "u":
        return b.select(is_zero, zero, b.urem(a, b.select(is_zero, one, b_)))
    minus_one = b.icmp_signed("==", b_, _fc(ln, d, -1))
    r = b.srem(a, b.select(b.or_(is_zero, minus_one), one, b_))  # x % -1 == 0 (and avoids INT_MIN % -1)
    if not fmod:
        fix = b.and_(b.icmp_signed("!=", r, zero),
                     b.xor(b.icmp_signed("<", r, zero), b.icmp_signed("<", b_, zero)))
        r = b.select(fix, b.add(r, b_), r)
    return b.select(is_zero, zero, r)


def _to_f64(ln, v, d: np.dtype):
    b = ln.b
    t = ln.ty(F64)
    if d == np.float64:
        return v
    if d == np.float32:
        return b.fpext(v, t)
    if d.kind == "i":
        return b.sitofp(v, t)
    return b.uitofp(v, t)


def _pow(ln, call, args):
    d = call.out
    if d.kind != "f" or call.in_dtypes[0] != d or _kind(call.in_dtypes[1]) not in "fiu":
        raise Unsupported(f"Pow {call.in_dtypes} -> {d}")
    x, y = args
    b = ln.b
    e = call.scalar_const(1)
    if e is not None and float(e) in (0.0, 1.0, 2.0, 3.0, 4.0, -1.0):
        e = float(e)
        if e == 0:
            return _fc(ln, d, 1)
        if e == -1:
            return b.fdiv(_fc(ln, d, 1), x)
        r = x
        for _ in range(int(e) - 1):
            r = b.fmul(r, x)
        return r
    r = ln.libm("pow", _to_f64(ln, x, d), _to_f64(ln, y, call.in_dtypes[1]))
    return r if d == np.float64 else b.fptrunc(r, ln.ty(F32))


def _neg(ln, call, args):
    d = _same(call, "fi")
    return ln.b.fneg(args[0]) if d.kind == "f" else ln.b.sub(_fc(ln, d, 0), args[0])


def _abs(ln, call, args):
    d = _same(call, "fiu")
    x = args[0]
    if d.kind == "f":
        return ln.fabs(x)
    if d.kind == "u":
        return x
    return ln.b.select(ln.b.icmp_signed("<", x, _fc(ln, d, 0)), ln.b.sub(_fc(ln, d, 0), x), x)


def _maximum(ln, d, a, b_):
    if d.kind == "f":
        return ln.np_maximum(a, b_)
    return ln.b.select(_cmp(ln, d, ">=", a, b_), a, b_)


def _minimum(ln, d, a, b_):
    if d.kind == "f":
        return ln.np_minimum(a, b_)
    return ln.b.select(_cmp(ln, d, "<=", a, b_), a, b_)


def _fold(step):
    def emit(ln, call, args):
        d = _same(call, "fiu")
        acc = args[0]
        for x in args[1:]:
            acc = step(ln, d, acc, x)
        return acc
    return emit


def _add_step(ln, d, a, b_):
    return ln.b.fadd(a, b_) if d.kind == "f" else ln.b.add(a, b_)


def _mean(ln, call, args):
    d = _float(call, None)
    acc = _fold(_add_step)(ln, call, args)
    return ln.b.fdiv(acc, _fc(ln, d, len(args)))


def _unary_intrinsic(name):
    def emit(ln, call, args):
        _float(call)
        return ln.intrinsic(name, args[0])
    return emit


def _reciprocal(ln, call, args):
    d = _float(call)
    return ln.b.fdiv(_fc(ln, d, 1), args[0])


def _sign(ln, call, args):
    d = _same(call, "fiu")
    x = args[0]
    b = ln.b
    one, zero = _fc(ln, d, 1), _fc(ln, d, 0)
    if d.kind == "u":
        return b.select(b.icmp_unsigned("!=", x, zero), one, zero)
    neg = b.select(_cmp(ln, d, "<", x, zero), _fc(ln, d, -1), x)  # 0 and NaN stay what they are
    r = b.select(_cmp(ln, d, ">", x, zero), one, neg)
    return r if d.kind == "f" else b.select(b.icmp_signed("==", x, zero), zero, r)


# -- activations -------------------------------------------------------------------------------------------------

def _relu(ln, call, args):
    d = _same(call, "fi")
    x = args[0]
    return _maximum(ln, d, x, _fc(ln, d, 0))


def _where_neg(ln, d, x, negative_value):
    """x < 0 ? negative_value : x (NaN stays)."""
    return ln.b.select(_cmp(ln, d, "<", x, _fc(ln, d, 0)), negative_value, x)


def _leaky_relu(ln, call, args):
    d = _float(call)
    x = args[0]
    return _where_neg(ln, d, x, ln.b.fmul(_fc(ln, d, call.attrs["alpha"]), x))


def _prelu(ln, call, args):
    d = _float(call, 2)
    if call.opset < 7:
        raise Unsupported("PRelu before opset 7 (legacy slope broadcasting)")
    x, slope = args
    return _where_neg(ln, d, x, ln.b.fmul(slope, x))


def _elu(ln, call, args):
    d = _float(call)
    x = args[0]
    return _where_neg(ln, d, x, ln.b.fmul(_fc(ln, d, call.attrs["alpha"]), m.expm1(ln, x)))


def _selu(ln, call, args):
    d = _float(call)
    x = args[0]
    b = ln.b
    neg = b.fmul(_fc(ln, d, call.attrs["alpha"]), m.expm1(ln, x))
    return b.fmul(_fc(ln, d, call.attrs["gamma"]), b.select(b.fcmp_ordered(">", x, _fc(ln, d, 0)), x, neg))


def _celu(ln, call, args):
    d = _float(call)
    x = args[0]
    b = ln.b
    alpha = _fc(ln, d, call.attrs["alpha"])
    neg = b.fmul(alpha, m.expm1(ln, b.fdiv(x, alpha)))
    return b.fadd(ln.np_maximum(x, _fc(ln, d, 0)), ln.np_minimum(_fc(ln, d, 0), neg))


def _thresholded_relu(ln, call, args):
    d = _float(call)
    x = args[0]
    return ln.b.select(ln.b.fcmp_ordered(">", x, _fc(ln, d, call.attrs["alpha"])), x, _fc(ln, d, 0))


def _shrink(ln, call, args):
    d = _float(call)
    x = args[0]
    b = ln.b
    lambd, bias = call.attrs["lambd"], call.attrs["bias"]
    upper = b.select(b.fcmp_ordered(">", x, _fc(ln, d, lambd)), b.fsub(x, _fc(ln, d, bias)), _fc(ln, d, 0))
    return b.select(b.fcmp_ordered("<", x, _fc(ln, d, -lambd)), b.fadd(x, _fc(ln, d, bias)), upper)


def _hard_sigmoid_of(ln, d, x, alpha, beta):
    y = ln.b.fadd(ln.b.fmul(_fc(ln, d, alpha), x), _fc(ln, d, beta))
    return ln.np_minimum(ln.np_maximum(y, _fc(ln, d, 0)), _fc(ln, d, 1))


def _hard_sigmoid(ln, call, args):
    d = _float(call)
    return _hard_sigmoid_of(ln, d, args[0], call.attrs["alpha"], call.attrs["beta"])


def _hard_swish(ln, call, args):
    d = _float(call)
    return ln.b.fmul(args[0], _hard_sigmoid_of(ln, d, args[0], 1 / 6, 0.5))


def _sigmoid(ln, call, args):
    _float(call)
    return m.sigmoid(ln, args[0])


def _swish(ln, call, args):
    d = _float(call)
    x = args[0]
    return ln.b.fmul(x, m.sigmoid(ln, ln.b.fmul(_fc(ln, d, call.attrs.get("alpha", 1.0)), x)))


def _math1(fn):
    def emit(ln, call, args):
        _float(call)
        return fn(ln, args[0])
    return emit


def _softplus_of(ln, d, x):
    b = ln.b
    return b.fadd(ln.np_maximum(x, _fc(ln, d, 0)), m.log1p_nonneg(ln, m.exp(ln, b.fneg(ln.fabs(x)))))


def _softplus(ln, call, args):
    return _softplus_of(ln, _float(call), args[0])


def _softsign(ln, call, args):
    d = _float(call)
    x = args[0]
    return ln.b.fdiv(x, ln.b.fadd(_fc(ln, d, 1), ln.fabs(x)))


def _mish(ln, call, args):
    d = _float(call)
    return ln.b.fmul(args[0], m.tanh(ln, _softplus_of(ln, d, args[0])))


def _gelu(ln, call, args):
    d = _float(call)
    x = args[0]
    b = ln.b
    if call.attrs.get("approximate", "none") == "tanh":
        # 0.5 x (1 + tanh(u)) = x sigmoid(2u): no cancellation for negative x
        x3 = b.fmul(b.fmul(x, x), x)
        u = b.fmul(_fc(ln, d, math.sqrt(2 / math.pi)), b.fadd(x, b.fmul(_fc(ln, d, 0.044715), x3)))
        return b.fmul(x, m.sigmoid(ln, b.fmul(_fc(ln, d, 2.0), u)))
    z = b.fdiv(x, _fc(ln, d, math.sqrt(2)))
    half_x = b.fmul(_fc(ln, d, 0.5), x)
    if d == np.float64:
        return b.fmul(half_x, b.fadd(_fc(ln, d, 1), m.erf(ln, z)))
    # 1 + erf(z) = erfc(-z) for z < 0 (no cancellation in the left tail) and 2 - erfc(z) for z >= 0: one
    # erfc of |z| (one exp, one division) serves both sides, accurate relative to 1 + erf(z)
    e = m.erfc_nonneg(ln, ln.fabs(z))
    return b.fmul(half_x, b.select(b.fcmp_ordered("<", z, _fc(ln, d, 0)), e, b.fsub(_fc(ln, d, 2), e)))


def _clip(ln, call, args):
    d = call.out
    if call.in_dtypes[0] != d or _kind(d) not in "fiu":
        raise Unsupported(f"Clip on {d}")
    x = args[0]
    if call.opset < 11:
        lo, hi = call.attrs.get("min"), call.attrs.get("max")
        lo = None if lo is None else _fc(ln, d, lo)
        hi = None if hi is None else _fc(ln, d, hi)
    else:
        for i in (1, 2):
            if i < len(call.in_dtypes) and call.in_dtypes[i] is not None and call.in_dtypes[i] != d:
                raise Unsupported("Clip bounds of another dtype")
        lo = args[1] if len(args) > 1 else None  # absent optional inputs are None
        hi = args[2] if len(args) > 2 else None
    y = x
    if lo is not None:
        y = _maximum(ln, d, y, lo)
    if hi is not None:
        y = _minimum(ln, d, y, hi)
    return y


# -- comparisons, logic, bits ------------------------------------------------------------------------------------

def _compare(op):
    def emit(ln, call, args):
        a_t, b_t = call.in_dtypes
        if a_t != b_t:
            raise Unsupported(f"comparison of {a_t} and {b_t}")
        return _bool(ln, _cmp(ln, a_t if a_t != np.bool_ else np.dtype(np.uint8), op, *args))
    return emit


def _isnan(ln, call, args):
    if call.in_dtypes[0].kind != "f":
        raise Unsupported("IsNaN of a non-float")
    return _bool(ln, ln.isnan(args[0]))


def _isinf(ln, call, args):
    d = call.in_dtypes[0]
    if d.kind != "f":
        raise Unsupported("IsInf of a non-float")
    x = args[0]
    b = ln.b
    pos, neg = bool(call.attrs.get("detect_positive", 1)), bool(call.attrs.get("detect_negative", 1))
    c = ln.const(I1, 0)
    if pos:
        c = b.or_(c, b.fcmp_ordered("==", x, _fc(ln, d, float("inf"))))
    if neg:
        c = b.or_(c, b.fcmp_ordered("==", x, _fc(ln, d, float("-inf"))))
    return _bool(ln, c)


def _where(ln, call, args):
    cond_t, x_t, y_t = call.in_dtypes
    if cond_t != np.bool_ or x_t != y_t or x_t != call.out:
        raise Unsupported(f"Where on {call.in_dtypes}")
    return ln.b.select(_truth(ln, args[0]), args[1], args[2])


def _logic(op):
    def emit(ln, call, args):
        _same(call, "b")
        if op == "not":
            return ln.b.xor(args[0], ln.const(I8, 1))
        return getattr(ln.b, op)(args[0], args[1])
    return emit


def _bitwise(op):
    def emit(ln, call, args):
        _same(call, "iu")
        if op == "not":
            return ln.b.not_(args[0])
        return getattr(ln.b, op)(args[0], args[1])
    return emit


def _bitshift(ln, call, args):
    d = _same(call, "u")
    x, n = args
    b = ln.b
    width = np.dtype(d).itemsize * 8
    too_far = b.icmp_unsigned(">=", n, _fc(ln, d, width))  # numpy: 0; LLVM: poison
    safe = b.select(too_far, _fc(ln, d, 0), n)
    r = b.shl(x, safe) if call.attrs["direction"] == "LEFT" else b.lshr(x, safe)
    return b.select(too_far, _fc(ln, d, 0), r)


# -- Cast ---------------------------------------------------------------------------------------------------------

def convert(ln: Lanes, v, src: np.dtype, dst: np.dtype):
    """``v`` (of dtype src) as dtype dst, the way numpy's astype does it on x86 (see the module docstring)."""
    src, dst = np.dtype(src), np.dtype(dst)
    b = ln.b
    if src == dst:
        return v
    sk, dk = _kind(src), _kind(dst)
    t = ln.of(dst)
    if dk == "b":
        if sk == "f":
            return _bool(ln, b.fcmp_unordered("!=", v, _fc(ln, src, 0)))
        return _bool(ln, b.icmp_unsigned("!=", v, _fc(ln, src, 0)))
    if sk == "b":
        return b.uitofp(v, t) if dk == "f" else b.zext(v, t) if dst.itemsize > 1 else v
    if sk == "f" and dk == "f":
        return b.fpext(v, t) if dst.itemsize > src.itemsize else b.fptrunc(v, t)
    if dk == "f":
        return b.sitofp(v, t) if sk == "i" else b.uitofp(v, t)
    if sk == "f":
        if dk == "u" and dst.itemsize >= 4:
            raise Unsupported(f"Cast {src} -> {dst}: numpy's out-of-range results depend on the CPU")
        # x86 truncation: to a 32-bit (64-bit for int64) integer, INT_MIN when NaN or out of range, then wrap
        wide = I64 if dst.itemsize == 8 else I32
        bound = 2.0 ** (wide.width - 1)
        x64 = _to_f64(ln, v, src)
        ok = b.and_(b.fcmp_ordered(">=" if wide is I64 else ">", x64, ln.const(F64, -bound if wide is I64
                                                                            else -bound - 1)),
                    b.fcmp_ordered("<", x64, ln.const(F64, bound)))
        safe = b.select(ok, v, _fc(ln, src, 0))
        r = b.select(ok, b.fptosi(safe, ln.ty(wide)), ln.const(wide, 1 << (wide.width - 1)))
        return b.trunc(r, t) if dst.itemsize * 8 < wide.width else r
    # integer -> integer
    if dst.itemsize < src.itemsize:
        return b.trunc(v, t)
    if dst.itemsize > src.itemsize:
        return b.sext(v, t) if sk == "i" else b.zext(v, t)
    return v


def _cast(ln, call, args):
    return convert(ln, args[0], call.in_dtypes[0], call.out)


def _identity(ln, call, args):
    if call.in_dtypes[0] != call.out:
        raise Unsupported("Identity changing dtype")
    return [args[0]] + [None] * (len(call.out_dtypes) - 1)


def _dropout(ln, call, args):
    # the fusion rules class Dropout as elementwise only in inference mode; check again
    node = call.node
    training = node.opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None and not (
        call.consts[2] is not None and not bool(call.consts[2].reshape(-1)[0]))
    if training or (node.opset < 7 and not call.attrs.get("is_test", 0)):
        raise Unsupported("Dropout in training mode")
    if call.in_dtypes[0] != call.out:
        raise Unsupported("Dropout changing dtype")
    outs = [args[0]]
    if len(call.out_dtypes) > 1 and call.out_dtypes[1] is not None:
        outs.append(_fc(ln, call.out_dtypes[1], 1))  # inference: the mask keeps everything
    return outs


def batchnorm_operands(node: Node):
    """BatchNormalization's per-channel inputs (scale, B, mean, var) broadcast along axis 1 of x, not along
    the trailing axes: callers view them with shape (C, 1, ..., 1). True when the node is in inference mode."""
    return node.op_type == "BatchNormalization" and len([o for o in node.outputs if o is not None]) == 1


def _batchnorm(ln, call, args):
    d = _float(call, None)
    node = call.node
    if not batchnorm_operands(node) or call.attrs.get("training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    if node.opset < 9 and not call.attrs.get("spatial", 1):
        raise Unsupported("BatchNormalization with spatial=0")
    x, scale, bias, mean, var = args
    b = ln.b
    # the reference: inv = scale / sqrt(var + eps); y = x * inv + (B - mean * inv)
    inv = b.fdiv(scale, ln.intrinsic("sqrt", b.fadd(var, _fc(ln, d, call.attrs.get("epsilon", 1e-5)))))
    return b.fadd(b.fmul(x, inv), b.fsub(bias, b.fmul(mean, inv)))


#: inputs an op reads only for their dtype or at compile time (not broadcast, not loaded)
UNREAD_INPUTS = {"CastLike": {1}, "Dropout": {1, 2}}

OPS: dict[str, Callable] = {
    "Add": _binary("fadd", "add"), "Sub": _binary("fsub", "sub"), "Mul": _binary("fmul", "mul"),
    "Div": _div, "Mod": _mod, "Pow": _pow, "Neg": _neg, "Abs": _abs,
    "Sum": _fold(_add_step), "Max": _fold(_maximum), "Min": _fold(_minimum), "Mean": _mean,
    "Reciprocal": _reciprocal, "Sqrt": _unary_intrinsic("sqrt"), "Floor": _unary_intrinsic("floor"),
    "Ceil": _unary_intrinsic("ceil"), "Round": _unary_intrinsic("roundeven"), "Sign": _sign,
    "Relu": _relu, "LeakyRelu": _leaky_relu, "PRelu": _prelu, "Elu": _elu, "Selu": _selu, "Celu": _celu,
    "ThresholdedRelu": _thresholded_relu, "Shrink": _shrink, "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish, "Sigmoid": _sigmoid, "Swish": _swish, "Tanh": _math1(m.tanh),
    "Exp": _math1(m.exp), "Log": _math1(m.log), "Erf": _math1(m.erf), "Gelu": _gelu, "Softplus": _softplus,
    "Softsign": _softsign, "Mish": _mish, "Clip": _clip,
    "Equal": _compare("=="), "Less": _compare("<"), "Greater": _compare(">"), "LessOrEqual": _compare("<="),
    "GreaterOrEqual": _compare(">="), "IsNaN": _isnan, "IsInf": _isinf, "Where": _where,
    "Not": _logic("not"), "And": _logic("and_"), "Or": _logic("or_"), "Xor": _logic("xor"),
    "BitwiseNot": _bitwise("not"), "BitwiseAnd": _bitwise("and_"), "BitwiseOr": _bitwise("or_"),
    "BitwiseXor": _bitwise("xor"), "BitShift": _bitshift,
    "Cast": _cast, "CastLike": _cast, "Identity": _identity, "Dropout": _dropout,
    "BatchNormalization": _batchnorm,
}
