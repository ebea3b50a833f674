"""MatMul/Gemm on the llvm backend: the shared microkernel against the reference, over the operand kinds
(constant / runtime, transposed), broadcast batches, small-M (GEMV-like) shapes and fused tails."""

from __future__ import annotations

import numpy as np
import pytest

from tests.llvm._gc_util import assert_close, assert_generated, run_both, single_op_model

RNG = np.random.default_rng(7)


def _w(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,k,n", [(1, 64, 100), (3, 17, 33), (5, 7, 9), (8, 48, 48), (37, 100, 70), (64, 256, 200)])
def test_matmul_const_b(m, k, n):
    got, want, desc = run_both(single_op_model("MatMul", {"a": (m, k)}, {"b": _w(k, n)}))
    assert_generated(desc, "MatMul")
    assert_close(got, want)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matmul_runtime_operands_threads(threads):
    got, want, desc = run_both(single_op_model("MatMul", {"a": (33, 20), "b": (20, 50)}, {}), threads=threads)
    assert_generated(desc, "MatMul")
    assert_close(got, want)


@pytest.mark.parametrize("a_shape,b_shape,const_b", [
    ((3, 8, 16), (3, 16, 24), True), ((2, 3, 8, 16), (1, 3, 16, 24), False), ((4, 8, 16), (16, 24), True),
    ((16,), (16, 24), True), ((5, 16), (16,), False), ((2, 1, 5, 16), (3, 16, 7), False)])
def test_matmul_batched_broadcast(a_shape, b_shape, const_b):
    if const_b:
        model = single_op_model("MatMul", {"a": a_shape}, {"b": _w(*b_shape)})
    else:
        model = single_op_model("MatMul", {"a": a_shape, "b": b_shape}, {})
    got, want, desc = run_both(model)
    assert_generated(desc, "MatMul")
    assert_close(got, want)


@pytest.mark.parametrize("attrs,const_b", [({}, True), ({"transB": 1}, True), ({"transA": 1}, True),
                                           ({"transB": 1, "alpha": 0.5, "beta": 2.0}, True),
                                           ({"transA": 1, "transB": 1}, False)])
def test_gemm(attrs, const_b):
    m, k, n = 19, 40, 35
    a_shape = (k, m) if attrs.get("transA") else (m, k)
    b_shape = (n, k) if attrs.get("transB") else (k, n)
    if const_b:
        model = single_op_model("Gemm", {"a": a_shape}, {"b": _w(*b_shape), "c": _w(n)}, attrs)
    else:
        model = single_op_model("Gemm", {"a": a_shape, "b": b_shape}, {"c": _w(m, 1)}, attrs)
    got, want, desc = run_both(model)
    assert_generated(desc, "Gemm")
    assert_close(got, want)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_fused_relu_tail(op):
    consts = {"b": _w(64, 50)} if op == "MatMul" else {"b": _w(64, 50), "c": _w(50)}
    got, want, desc = run_both(single_op_model(op, {"a": (10, 64)}, consts, relu=True))
    assert_generated(desc, "gemm+epilogue")
    assert (got >= 0).all()
    assert_close(got, want)


def test_microkernel_packing_layouts():
    from graphc.backends.llvm.kernels.microkernel import pack_a_const, pack_b_const

    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    pa = pack_a_const(a, 2).reshape(2, 5, 2)  # panels, k, MR
    assert pa[0, 4, 1] == a[1, 4] and pa[1, 2, 0] == a[2, 2] and pa[1, 2, 1] == 0
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    pb = pack_b_const(b, 3).reshape(2, 3, 3)  # panels, k, NR
    assert pb[1, 2, 0] == b[2, 3] and pb[1, 2, 1] == 0
