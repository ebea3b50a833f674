"""Ops: linear algebra — MatMul, Gemm, Einsum, Det.

numpy's matmul/einsum on float16 and the ml_dtypes floats (bfloat16, float8...) are slow, accumulate in low
precision, or even change the result type (bfloat16 @ bfloat16 is float32), so these ops compute such inputs in
float32 and cast the result back (:func:`compute_dtype`); the reduction and attention modules share that helper.
"""

from __future__ import annotations

import math
import string

import numpy as np

from ..ir.types import TensorType
from .registry import Cost, FusionClass, OpContext, OpDef, broadcast_shapes, register

# -- helpers shared with reduce.py and attention.py ------------------------------------------------------------


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype to compute in for inputs of ``dtype``: float32 for floats narrower than 32 bits."""
    dtype = np.dtype(dtype)
    is_float = dtype.kind == "f" or (dtype.kind == "V" and dtype.itemsize <= 2)  # ml_dtypes floats are kind 'V'
    return np.dtype(np.float32) if is_float and dtype.itemsize < 4 else dtype


def upcast(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    """The arrays converted to their :func:`compute_dtype` (None passes through)."""
    return [None if a is None else a.astype(compute_dtype(a.dtype), copy=False) for a in arrays]


def dims_product(dims) -> int | None:
    """Product of dimensions, or None when any is symbolic or unknown."""
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return math.prod(dims)


def _read_written(ctx: OpContext) -> tuple[int, int]:
    read = sum(t.nbytes() or 0 for t in (ctx.input_type(i) for i in range(ctx.num_inputs)) if t is not None)
    written = sum(v.type.nbytes() or 0 for v in ctx.node.outputs
                  if v is not None and isinstance(v.type, TensorType))
    return read, written


# -- MatMul ---------------------------------------------------------------------------------------------------


def matmul_shape(a: tuple, b: tuple) -> tuple:
    """numpy.matmul's output shape for shapes that may hold symbolic dims (1-D operands get a dim added then
    dropped again; batch dims broadcast)."""
    if len(a) == 0 or len(b) == 0:
        raise ValueError("MatMul operands must have rank >= 1")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    ka, kb = a2[-1], b2[-2]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ValueError(f"MatMul inner dimensions differ: {tuple(a)} x {tuple(b)}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul keeping the operands' dtype, computing narrow floats in float32."""
    ca, cb = upcast(a, b)
    return np.asarray(np.matmul(ca, cb)).astype(a.dtype, copy=False)


@register
class MatMul(OpDef):
    op_type = "MatMul"
    fusion = FusionClass.COMPLEX

    def compute(self, ctx, a, b):
        return matmul(a, b)

    def infer(self, ctx):
        ta, tb = ctx.input_type(0), ctx.input_type(1)
        if ta is None or tb is None:
            return None
        shape = None
        if ta.shape is not None and tb.shape is not None:
            try:
                shape = matmul_shape(ta.shape, tb.shape)
            except ValueError as e:
                raise ctx.shape_error(str(e)) from None
        return [TensorType(ta.dtype, shape)]

    def cost(self, ctx):
        """2*M*N*K per output matrix: 2 * (output elements) * K."""
        read, written = _read_written(ctx)
        types = self.infer(ctx)
        if not types or types[0].shape is None or not ctx.input_type(0).shape:
            return Cost(0, read, written)
        k = ctx.input_type(0).shape[-1]
        n_out = dims_product(types[0].shape)
        flops = 2 * n_out * k if isinstance(k, int) and n_out is not None else 0
        return Cost(flops, read, written)


# -- Gemm -----------------------------------------------------------------------------------------------------


@register
class Gemm(OpDef):
    """Y = alpha * A' @ B' + beta * C, A' = A or A.T (transA), B' likewise; C broadcasts to (M, N)."""

    op_type = "Gemm"
    fusion = FusionClass.COMPLEX
    attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}

    def compute(self, ctx, a, b, c=None):
        dtype = a.dtype
        a, b, c = upcast(a, b, c)
        if ctx.attr("transA"):
            a = a.T
        if ctx.attr("transB"):
            b = b.T
        y = a @ b
        alpha, beta = ctx.attr("alpha"), ctx.attr("beta")
        if alpha != 1.0:
            y = y * alpha
        if c is not None and beta != 0.0:
            y = y + (c * beta if beta != 1.0 else c)
        return np.asarray(y).astype(dtype, copy=False)

    def _mnk(self, ctx):
        ta, tb = ctx.input_type(0), ctx.input_type(1)
        if ta is None or tb is None or ta.shape is None or tb.shape is None:
            return None
        if len(ta.shape) != 2 or len(tb.shape) != 2:
            raise ctx.shape_error(f"Gemm needs 2-D A and B, got {ta} and {tb}")
        m, k = ta.shape[::-1] if ctx.attr("transA") else ta.shape
        kb, n = tb.shape[::-1] if ctx.attr("transB") else tb.shape
        if isinstance(k, int) and isinstance(kb, int) and k != kb:
            raise ctx.shape_error(f"Gemm inner dimensions differ: {ta} x {tb}")
        return m, n, k if isinstance(k, int) else kb

    def infer(self, ctx):
        ta = ctx.input_type(0)
        if ta is None:
            return None
        mnk = self._mnk(ctx)
        return [TensorType(ta.dtype, None if mnk is None else mnk[:2])]

    def cost(self, ctx):
        read, written = _read_written(ctx)
        mnk = self._mnk(ctx)
        size = None if mnk is None else dims_product(mnk)
        flops = 0 if size is None else 2 * size
        return Cost(flops, read, written)


# -- Einsum ---------------------------------------------------------------------------------------------------


def parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Split an einsum equation into per-operand index strings and the output index string.

    The ellipsis is replaced by explicit upper-case letters (so the result is a plain einsum equation); implicit
    mode (no ``->``) gives the output of indices used once, sorted, after the broadcast (ellipsis) dims.
    """
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"einsum equation {equation!r} names {len(terms)} operands, {len(ranks)} given")
    ell_rank = max((r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t), default=0)
    unused = [c for c in string.ascii_letters if c not in equation]
    ell_letters = "".join(unused[:ell_rank])  # the broadcast dims, right-aligned across operands
    out_terms = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            n = rank - (len(term) - 3)
            term = term.replace("...", ell_letters[ell_rank - n:])
        if len(term) != rank:
            raise ValueError(f"einsum term {term!r} does not match an operand of rank {rank}")
        out_terms.append(term)
    if arrow:
        out = rhs.replace("...", ell_letters)
    else:
        letters = "".join(out_terms)
        out = ell_letters + "".join(sorted(c for c in set(letters) if c not in ell_letters and letters.count(c) == 1))
    return out_terms, out


@register
class Einsum(OpDef):
    op_type = "Einsum"
    fusion = FusionClass.OPAQUE

    def compute(self, ctx, *inputs):
        dtype = inputs[0].dtype
        terms, out = parse_einsum(ctx.attr("equation"), [x.ndim for x in inputs])
        y = np.einsum(",".join(terms) + "->" + out, *upcast(*inputs), optimize=len(inputs) > 2)
        return np.asarray(y).astype(dtype, copy=False)

    def infer(self, ctx):
        types = [ctx.input_type(i) for i in range(ctx.num_inputs)]
        if not types or any(t is None for t in types):
            return None
        if any(t.shape is None for t in types):
            return [TensorType(types[0].dtype, None)]
        try:
            terms, out = parse_einsum(ctx.attr("equation"), [len(t.shape) for t in types])
        except ValueError as e:
            raise ctx.shape_error(str(e)) from None
        sizes: dict[str, list] = {}
        for term, t in zip(terms, types):
            for letter, dim in zip(term, t.shape):
                sizes.setdefault(letter, []).append(dim)
        # broadcast each index's sizes (a size-1 ellipsis dim broadcasts against the others)
        shape = tuple(broadcast_shapes(*[(d,) for d in sizes[c]])[0] for c in out)
        return [TensorType(types[0].dtype, shape)]


# -- Det ------------------------------------------------------------------------------------------------------


@register
class Det(OpDef):
    op_type = "Det"
    fusion = FusionClass.OPAQUE

    def compute(self, ctx, x):
        (cx,) = upcast(x)
        return np.asarray(np.linalg.det(cx)).astype(x.dtype, copy=False)

    def infer(self, ctx):
        t = ctx.input_type(0)
        if t is None:
            return None
        return [TensorType(t.dtype, None if t.shape is None else t.shape[:-2])]

    def cost(self, ctx):
        """LU factorisation: about 2/3 n^3 per matrix."""
        read, written = _read_written(ctx)
        t = ctx.input_type(0)
        flops = 0
        if t is not None and t.is_static and len(t.shape) >= 2:
            flops = int(dims_product(t.shape[:-2]) * 2 * t.shape[-1] ** 3 / 3)
        return Cost(flops, read, written)
