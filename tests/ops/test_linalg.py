"""MatMul, Gemm, Einsum, Det: shape rules with symbolic dims, costs, dtypes — what the node tests do not cover."""

from functools import partial

import ml_dtypes
import numpy as np
import pytest

from graphc.errors import ShapeInferenceError
from graphc.ir.types import TensorType
from graphc.ops import lookup

from tests.ops import util


node_ctx = partial(util.node_ctx, opset=18)
infer = partial(util.infer, opset=18)
run = partial(util.run, opset=18)


F32 = np.float32


@pytest.mark.parametrize("a, b, out", [
    (("N", 3, 4), (4, 5), ("N", 3, 5)),
    ((4,), ("N", 4, 5), ("N", 5)),
    ((3, 4), (4,), (3,)),
    ((4,), (4,), ()),
    ((2, 1, 3, 4), ("B", 4, 6), (2, "B", 3, 6)),
])
def test_matmul_shape_rule(a, b, out):
    (t,) = infer("MatMul", [TensorType(F32, a), TensorType(F32, b)])
    assert t == TensorType(F32, out)


def test_matmul_rejects_mismatched_inner_dims():
    with pytest.raises(ShapeInferenceError):
        infer("MatMul", [TensorType(F32, (3, 4)), TensorType(F32, (5, 6))])


def test_matmul_cost_and_dtypes():
    ctx = node_ctx("MatMul", [TensorType(F32, (2, 3, 4)), TensorType(F32, (4, 5))])
    assert lookup("", "MatMul").cost(ctx).flops == 2 * 2 * 3 * 5 * 4
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)).astype(F32), rng.standard_normal((4, 5)).astype(F32)
    assert run("MatMul", a, b).dtype == F32
    bf = run("MatMul", a.astype(ml_dtypes.bfloat16), b.astype(ml_dtypes.bfloat16))
    assert bf.dtype == ml_dtypes.bfloat16  # numpy alone would give float32
    np.testing.assert_allclose(bf.astype(F32), a @ b, rtol=0.05, atol=0.05)


def test_gemm_attributes_and_rules():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 3)).astype(F32), rng.standard_normal((5, 4)).astype(F32)
    c = rng.standard_normal(5).astype(F32)
    attrs = {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}
    y = run("Gemm", a, b, c, attrs=attrs)
    assert y.dtype == F32
    np.testing.assert_allclose(y, 0.5 * a.T @ b.T + 2.0 * c, rtol=1e-5)
    np.testing.assert_allclose(run("Gemm", a.T.copy(), b.T.copy(), None), a.T @ b.T, rtol=1e-5)  # no C
    (t,) = infer("Gemm", [TensorType(F32, (4, "M")), TensorType(F32, (5, 4)), None], attrs=attrs)
    assert t == TensorType(F32, ("M", 5))
    ctx = node_ctx("Gemm", [TensorType(F32, (4, 3)), TensorType(F32, (5, 4)), TensorType(F32, (5,))], attrs)
    assert lookup("", "Gemm").cost(ctx).flops == 2 * 3 * 5 * 4
    yi = run("Gemm", np.ones((2, 2), np.int32), np.ones((2, 2), np.int32), attrs={"alpha": 3.0}, opset=13)
    assert yi.dtype == np.int32 and (yi == 6).all()


@pytest.mark.parametrize("eq, shapes", [
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("ii->i", [(3, 3)]),
    ("bii", [(2, 3, 3)]),              # implicit output: 'b'
    ("ij,jk", [(2, 3), (3, 4)]),       # implicit output: 'ik'
    ("Ab,bC->AC", [(2, 3), (3, 4)]),   # upper-case indices
    ("...j,j", [(2, 1, 3), (3,)]),     # implicit with ellipsis: '...'
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
])
def test_einsum(eq, shapes):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype(F32) for s in shapes]
    y = run("Einsum", *arrays, attrs={"equation": eq})
    expected = np.einsum(eq, *arrays)
    assert y.dtype == F32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    (t,) = infer("Einsum", [TensorType.of(a) for a in arrays], attrs={"equation": eq})
    assert t.shape == expected.shape


def test_einsum_infer_symbolic_batch():
    (t,) = infer("Einsum", [TensorType(F32, ("N", 3, 4)), TensorType(F32, ("N", 4, 5))],
                 attrs={"equation": "bij,bjk->bki"})
    assert t.shape == ("N", 5, 3)


def test_det_float16_and_batch_shape():
    x = np.array([[[2, 1], [1, 3]], [[1, 0], [0, 4]]], np.float16)
    y = run("Det", x)
    assert y.dtype == np.float16 and y.shape == (2,)
    np.testing.assert_allclose(y, [5, 4])
    (t,) = infer("Det", [TensorType(F32, ("N", 3, 3))])
    assert t.shape == ("N",)
