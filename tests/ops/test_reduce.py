"""Reductions and the softmax family: opset-dependent axes, empty sets, dtypes, shape rules, costs."""

from functools import partial

import numpy as np
import pytest

from graphc.ir.types import TensorType
from graphc.ops import lookup

from tests.ops import util

F32 = np.float32


node_ctx = partial(util.node_ctx, opset=18)
run = partial(util.run, opset=18)


X = np.arange(24, dtype=F32).reshape(2, 3, 4)


def test_axes_attribute_before_and_input_after():
    # ReduceSum: attribute until opset 13; the others until 18
    np.testing.assert_array_equal(run("ReduceSum", X, attrs={"axes": [1], "keepdims": 0}, opset=11), X.sum(1))
    np.testing.assert_array_equal(run("ReduceSum", X, np.array([1]), attrs={"keepdims": 0}, opset=13), X.sum(1))
    np.testing.assert_array_equal(run("ReduceMean", X, attrs={"axes": [-1]}, opset=13), X.mean(-1, keepdims=True))
    np.testing.assert_array_equal(run("ReduceMean", X, np.array([-1]), opset=18), X.mean(-1, keepdims=True))
    # no axes: every axis, unless noop_with_empty_axes
    assert run("ReduceMax", X, opset=11).shape == (1, 1, 1)
    assert run("ReduceMax", X, np.array([], np.int64), opset=18).shape == (1, 1, 1)
    assert run("ReduceMax", X, attrs={"noop_with_empty_axes": 1}, opset=18) is X


@pytest.mark.parametrize("op, x, expected", [
    ("ReduceMax", np.zeros((0, 3), F32), -np.inf),
    ("ReduceMax", np.zeros((0, 3), np.int32), np.iinfo(np.int32).min),
    ("ReduceMax", np.zeros((0, 3), bool), False),
    ("ReduceMin", np.zeros((0, 3), F32), np.inf),
    ("ReduceMin", np.zeros((0, 3), np.uint8), 255),
    ("ReduceProd", np.zeros((0, 3), F32), 1),
    ("ReduceSum", np.zeros((0, 3), np.int64), 0),
    ("ReduceLogSum", np.zeros((0, 3), F32), -np.inf),
    ("ReduceLogSumExp", np.zeros((0, 3), F32), -np.inf),
    ("ReduceL2", np.zeros((0, 3), F32), 0),
])
def test_empty_reductions_give_the_identity(op, x, expected):
    y = run(op, x, np.array([0]), attrs={"keepdims": 0}, opset=20)
    assert y.dtype == x.dtype and y.shape == (3,)
    assert (y == expected).all()


def test_dtypes_and_stability():
    ints = np.array([[1, 2], [3, 5]], np.int32)
    y = run("ReduceMean", ints, np.array([1]))
    assert y.dtype == np.int32 and y.tolist() == [[1], [4]]
    big = np.array([[1000.0, 1000.0]], F32)
    y = run("ReduceLogSumExp", big, np.array([1]))
    assert y.dtype == F32 and np.isclose(y[0, 0], 1000 + np.log(2))
    half = np.full((4, 2048), 1.0, np.float16)
    assert run("ReduceSum", half, np.array([1]), opset=13)[0, 0] == 2048  # no float16 accumulation drift


def test_reduce_shape_rule_with_symbolic_dims():
    op = lookup("", "ReduceSum")
    t = TensorType(F32, ("N", "C", 7))
    (out,) = op.infer(node_ctx("ReduceSum", [t, TensorType(np.int64, (1,))], {"keepdims": 1}, opset=13,
                               consts={1: np.array([-1])}))
    assert out == TensorType(F32, ("N", "C", 1))
    (out,) = op.infer(node_ctx("ReduceSum", [t, TensorType(np.int64, (1,))], {"keepdims": 0}, opset=13,
                               consts={1: np.array([1])}))
    assert out == TensorType(F32, ("N", 7))
    # axes known only at run time: the rank survives with keepdims
    (out,) = op.infer(node_ctx("ReduceSum", [t, TensorType(np.int64, (1,))], {"keepdims": 1}, opset=13))
    assert out.shape == (None, None, None)
    (out,) = lookup("", "ReduceMax").infer(node_ctx("ReduceMax", [t], {"axes": [0, 2], "keepdims": 0}, opset=11))
    assert out == TensorType(F32, ("C",))


def test_reduce_cost_is_input_elements():
    ctx = node_ctx("ReduceMean", [TensorType(F32, (2, 3, 4)), TensorType(np.int64, (1,))], {}, opset=18,
                   consts={1: np.array([1])})
    assert lookup("", "ReduceMean").cost(ctx).flops == 24


def test_softmax_axis_semantics_changed_at_13():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4)).astype(F32)
    old = run("Softmax", x, attrs={"axis": 1}, opset=11)  # coerced to (2, 12)
    flat = np.exp(x.reshape(2, 12)) / np.exp(x.reshape(2, 12)).sum(1, keepdims=True)
    np.testing.assert_allclose(old, flat.reshape(x.shape), rtol=1e-5)
    new = run("Softmax", x, attrs={"axis": 1}, opset=13)
    np.testing.assert_allclose(new, np.exp(x) / np.exp(x).sum(1, keepdims=True), rtol=1e-5)
    assert run("Softmax", x, opset=11).shape == x.shape  # default axis 1 before 13, -1 after
    log_new = np.log(np.exp(x) / np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(run("LogSoftmax", x, opset=13), log_new, rtol=1e-5, atol=1e-6)


def test_softmax_is_stable_and_keeps_dtype():
    x = np.array([[1e4, 1e4 - 1, -1e4]], F32)
    y = run("Softmax", x, opset=13)
    assert y.dtype == F32 and np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(), 1, rtol=1e-6)
    ly = run("LogSoftmax", x, opset=13)
    assert ly.dtype == F32 and np.isclose(ly[0, 2], -2e4 - np.log1p(np.exp(-1)), rtol=1e-6)


def test_hardmax_first_maximum_and_old_axis():
    x = np.array([[[1, 3], [3, 0]], [[2, 2], [0, 1]]], F32)
    y = run("Hardmax", x, attrs={"axis": 1}, opset=11)  # over the flattened last two axes
    np.testing.assert_array_equal(y, [[[0, 1], [0, 0]], [[1, 0], [0, 0]]])
    y = run("Hardmax", x, attrs={"axis": 1}, opset=13)  # over axis 1 only
    np.testing.assert_array_equal(y, [[[0, 1], [1, 0]], [[1, 1], [0, 0]]])
    (t,) = lookup("", "Hardmax").infer(node_ctx("Hardmax", [TensorType(F32, ("N", 5))], {}, opset=13))
    assert t == TensorType(F32, ("N", 5))
