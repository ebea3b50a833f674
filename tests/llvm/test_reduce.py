"""llvm code generators of the Reduce* ops, ArgMax/ArgMin, Softmax and LogSoftmax (backends/llvm/kernels/reduce.py,
softmax.py, rowwise.py), checked against the reference target; each test also checks that the generated kernel,
not a fallback, ran."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc

pytest.importorskip("llvmlite")

_TP = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
       np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
       np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


def _model(op, x_shape, y_shape, dtype=np.float32, y_dtype=None, opset=17, inits=(), **attrs):
    dtype = np.dtype(dtype)
    y_dtype = np.dtype(y_dtype or dtype)
    node = helper.make_node(op, ["x"] + [name for name, _ in inits], ["y"], **attrs)
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", _TP[dtype], list(x_shape))],
                              [helper.make_tensor_value_info("y", _TP[y_dtype], list(y_shape))],
                              [numpy_helper.from_array(a, name) for name, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, x, op, rtol=1e-5, atol=1e-6, threads=None):
    options = {"threads": threads} if threads else {}
    llvm = graphc.compile(model, target="llvm", **options)
    got = llvm(x)
    want = graphc.compile(model, target="reference")(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    spec = llvm.executable.describe()["specializations"][0]
    assert spec["emitters"].get(op) == 1 and spec["fallback_ops"] == [], spec
    return got


def _reduce(op, x_shape, axes, keepdims=1, dtype=np.float32):
    """A Reduce* model with axes as an attribute (opset 11 for ReduceSum, 13 for the others)."""
    return _model(op, x_shape, _reduced_shape(x_shape, axes, bool(keepdims)), dtype=dtype,
                  opset=11 if op == "ReduceSum" else 13, axes=axes, keepdims=keepdims)


def _reduced_shape(shape, axes, keepdims=True):
    axes = {a % len(shape) for a in axes}
    return [1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes]


REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"]
# row mode (innermost reduced), column mode (innermost kept), reduced dims apart (offset table), everything
LAYOUTS = [((5, 67), [1]), ((67, 5), [0]), ((3, 4, 5, 6), [0, 2]), ((2, 3, 5), [0, 1, 2]), ((4, 1, 9), [1, 2])]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_float_reductions_match_reference_in_every_layout(op):
    rng = np.random.default_rng(0)
    for shape, axes in LAYOUTS:
        x = rng.uniform(0.5, 1.5, shape).astype(np.float32)  # positive: LogSum defined, Prod tame
        if op not in ("ReduceLogSum", "ReduceProd"):
            x = x * np.where(rng.random(shape) < 0.5, -1, 1).astype(np.float32)
        _check(_reduce(op, shape, axes, keepdims=int(len(shape) != 3)), x, op)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_reductions_are_exact_including_wraparound(op, dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(1).integers(info.min, info.max, (7, 33), endpoint=True).astype(dtype)
    for axes in ([1], [0]):
        _check(_reduce(op, x.shape, axes, dtype=dtype), x, op, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_byte_max_min_compare_with_the_right_signedness(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(8).integers(info.min, info.max, (5, 40), endpoint=True).astype(dtype)
    for op in ("ReduceMax", "ReduceMin"):
        _check(_reduce(op, x.shape, [1], dtype=dtype), x, op, rtol=0, atol=0)


def test_double_and_axes_as_constant_input_opset18():
    x = np.random.default_rng(2).standard_normal((6, 10, 3))
    axes = np.array([-2], np.int64)
    model = _model("ReduceLogSumExp", x.shape, [6, 3], dtype=np.float64, opset=18, inits=[("axes", axes)],
                   keepdims=0)
    _check(model, x, "ReduceLogSumExp", rtol=1e-12, atol=1e-12)


def test_noop_with_empty_axes_copies_and_default_axes_reduce_everything():
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    noop = _model("ReduceSum", x.shape, x.shape, opset=13, inits=[("axes", np.zeros(0, np.int64))],
                  noop_with_empty_axes=1)
    np.testing.assert_array_equal(_check(noop, x, "ReduceSum"), x)
    _check(_model("ReduceMean", x.shape, [1, 1], opset=18), x, "ReduceMean")


def test_empty_reductions_give_the_identity():
    x = np.zeros((3, 0, 4), np.float32)
    for op in ("ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceLogSumExp", "ReduceLogSum"):
        _check(_reduce(op, x.shape, [1]), x, op)


def test_nan_and_infinities_propagate_like_numpy():
    x = np.random.default_rng(4).standard_normal((4, 40)).astype(np.float32)
    x[0, 7] = np.nan
    x[1, :] = -np.inf
    x[2, 3] = np.inf
    for op in ("ReduceMax", "ReduceMin", "ReduceLogSumExp", "ReduceSum"):
        got = _check(_reduce(op, x.shape, [1]), x, op)
        assert np.isnan(got[0, 0])
    for op in ("Softmax", "LogSoftmax"):
        _check(_model(op, x.shape, x.shape, axis=1), x, op)


def test_results_do_not_depend_on_the_thread_count():
    x = np.random.default_rng(5).standard_normal((64, 700)).astype(np.float32)
    for op, axes in (("ReduceSum", [1]), ("ReduceSum", [0])):
        model = _reduce(op, x.shape, axes)
        # sums of 700 terms that cancel: float32 orders differ by ~n * eps * |x| from numpy's pairwise sum
        one = _check(model, x, op, threads=1, atol=1e-4)
        two = _check(model, x, op, threads=2, atol=1e-4)
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_argmax_argmin_first_last_nan_keepdims(op):
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, (5, 9, 6)).astype(np.float32)  # many ties
    x[1, 2, 3] = np.nan
    x[1, 5, 3] = np.nan
    for axis in (0, 1, -1):
        for last in (0, 1):
            for keep in (0, 1):
                shape = _reduced_shape(x.shape, [axis], bool(keep))
                model = _model(op, x.shape, shape, y_dtype=np.int64, opset=13, axis=axis, keepdims=keep,
                               select_last_index=last)
                _check(model, x, op, rtol=0, atol=0)
    xi = rng.integers(-3, 3, (4, 7)).astype(np.int32)
    _check(_model(op, xi.shape, [4, 1], dtype=np.int32, y_dtype=np.int64, opset=13, axis=1), xi, op, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_both_axis_semantics(op):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3, 4, 70)) * 5).astype(np.float32)
    for opset in (11, 13):
        for axis in (-1, 1, 0):
            _check(_model(op, x.shape, x.shape, opset=opset, axis=axis), x, op)
    xd = rng.standard_normal((6, 600)).astype(np.float64)  # column mode over more than one chunk
    _check(_model(op, xd.shape, xd.shape, dtype=np.float64, opset=13, axis=0), xd, op, rtol=1e-12, atol=1e-13)


def test_hardmax_first_maximum_both_axis_semantics():
    x = np.random.default_rng(9).integers(0, 3, (3, 4, 5)).astype(np.float32)  # ties: the first one wins
    x[2, 1, 3] = np.nan
    for opset in (11, 13):
        for axis in (-1, 1, 0):
            _check(_model("Hardmax", x.shape, x.shape, opset=opset, axis=axis), x, "Hardmax", rtol=0, atol=0)
