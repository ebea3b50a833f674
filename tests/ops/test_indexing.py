"""Indexing ops: bounds checks, negative indices, reductions of duplicated scatter indices, tie orders, older opsets,
shape rules with symbolic dims and costs — what the ONNX node tests do not cover."""

from functools import partial

import numpy as np
import pytest

from graphc.errors import ExecutionError
from graphc.ir.types import TensorType
from graphc.ops import FusionClass, lookup

from tests.ops import util

F32, I64 = np.float32, np.int64


node_ctx = partial(util.node_ctx, opset=18)
infer = partial(util.infer, opset=18)
run = partial(util.run, opset=18)


def test_gathers_check_bounds_and_wrap_negatives():
    data = np.arange(12, dtype=F32).reshape(3, 4)
    np.testing.assert_array_equal(run("Gather", data, np.array([-1, 0], I64), attrs={"axis": 1}), data[:, [3, 0]])
    for op, idx in (("Gather", np.array([3])), ("Gather", np.array([-4])),
                    ("GatherElements", np.full((3, 4), 3)), ("GatherND", np.array([[0, 4]]))):
        with pytest.raises(ExecutionError, match="out of range"):
            run(op, data, idx.astype(I64))
    np.testing.assert_array_equal(run("GatherND", data, np.array([[-1, -2], [0, 1]], I64)), [10, 1])
    # batch_dims=1: one index tuple list per batch row
    np.testing.assert_array_equal(run("GatherND", data, np.array([[1], [-1], [0]], I64), attrs={"batch_dims": 1}),
                                  [1, 7, 8])


def test_gather_rules_with_symbolic_dims():
    (t,) = infer("Gather", [TensorType(F32, ("N", 10, 4)), TensorType(I64, ("B", 2))], attrs={"axis": 1})
    assert t == TensorType(F32, ("N", "B", 2, 4))
    (t,) = infer("GatherND", [TensorType(F32, ("N", 5, 6, 7)), TensorType(I64, ("N", 3, 2))], attrs={"batch_dims": 1})
    assert t == TensorType(F32, ("N", 3, 7))
    (t,) = infer("OneHot", [TensorType(I64, ("N", 3)), None, TensorType(F32, (2,))], attrs={"axis": 1},
                 consts={1: np.array(10, I64)})
    assert t == TensorType(F32, ("N", 10, 3))


@pytest.mark.parametrize("reduction, expected", [
    ("add", [14, 1, 10]), ("mul", [84, 1, 25]), ("max", [7, 1, 5]), ("min", [3, 1, 5])])
def test_scatter_reductions_combine_duplicates(reduction, expected):
    data = np.array([4, 1, 5], F32)
    indices, updates = np.array([0, 0, -1], I64), np.array([3, 7, 5], F32)
    out = run("ScatterElements", data, indices, updates, attrs={"reduction": reduction})
    np.testing.assert_array_equal(out, expected)
    out_nd = run("ScatterND", data, indices.reshape(3, 1), updates, attrs={"reduction": reduction})
    np.testing.assert_array_equal(out_nd, expected)
    assert out.dtype == F32 and data[0] == 4  # the input is not modified in place


def test_scatter_failures_and_opset9_scatter():
    data = np.zeros((2, 3), F32)
    with pytest.raises(ExecutionError):
        run("ScatterElements", data, np.array([[3]], I64), np.array([[1]], F32), attrs={"axis": 1})
    with pytest.raises(ExecutionError):
        run("ScatterND", data, np.array([[0, 1]], I64), np.array([[1, 2]], F32))  # updates of the wrong shape
    out = run("Scatter", data, np.array([[2, 0]], I64), np.array([[5, 6]], F32), attrs={"axis": 1}, opset=9)
    np.testing.assert_array_equal(out, [[6, 0, 5], [0, 0, 0]])


def test_tensor_scatter_linear_bounds_and_circular_wrap():
    past = np.zeros((2, 4, 1), F32)
    update = np.ones((2, 2, 1), F32)
    with pytest.raises(ExecutionError):
        run("TensorScatter", past, update, np.array([0, 3], I64), attrs={"axis": 1}, opset=24)
    out = run("TensorScatter", past, update, np.array([0, 3], I64), attrs={"axis": 1, "mode": "circular"}, opset=24)
    np.testing.assert_array_equal(out[:, :, 0], [[1, 1, 0, 0], [1, 0, 0, 1]])


def test_topk_ties_unsigned_and_opset9_attribute():
    x = np.array([[3, 1, 3, 2, 3]], np.uint64)
    values, indices = run("TopK", x, np.array([3], I64), num_outputs=2)
    assert values.dtype == np.uint64 and indices.dtype == I64
    np.testing.assert_array_equal(indices, [[0, 2, 4]])  # equal values by increasing index
    values, indices = run("TopK", x, np.array([2], I64), attrs={"largest": 0}, num_outputs=2)
    np.testing.assert_array_equal(indices, [[1, 3]])
    values, indices = run("TopK", x.astype(F32), attrs={"k": 1, "axis": 0}, opset=9, num_outputs=2)
    assert values.shape == (1, 5)
    with pytest.raises(ExecutionError):
        run("TopK", x, np.array([6], I64), num_outputs=2)
    vt, it = infer("TopK", [TensorType(F32, ("N", 10)), None], num_outputs=2, consts={1: np.array([3], I64)})
    assert vt == TensorType(F32, ("N", 3)) and it == TensorType(I64, ("N", 3))


def test_arg_reductions_and_scans():
    x = np.array([[1, 5, 5], [7, 7, 0]], F32)
    assert run("ArgMax", x, attrs={"axis": 1, "keepdims": 0}).tolist() == [1, 0]
    assert run("ArgMax", x, attrs={"axis": 1, "select_last_index": 1}).tolist() == [[2], [1]]
    assert run("ArgMin", x, attrs={"axis": -1}).dtype == I64
    (t,) = infer("ArgMax", [TensorType(F32, ("N", 3, 4))], attrs={"axis": -1, "keepdims": 0})
    assert t == TensorType(I64, ("N", 3))
    y = run("CumSum", np.array([1, 2, 3], np.int32), np.array([0], np.int32), attrs={"exclusive": 1, "reverse": 1})
    assert y.dtype == np.int32 and y.tolist() == [5, 3, 0]
    y = run("CumProd", np.array([1, 2, 3], F32), np.array(0, I64), attrs={"exclusive": 1}, opset=26)
    assert y.tolist() == [1, 1, 2]
    ctx = node_ctx("ArgMax", [TensorType(F32, (4, 8))], attrs={"axis": 1})
    assert lookup("", "ArgMax").cost(ctx).flops == 32


def test_data_dependent_shapes():
    assert run("NonZero", np.array(3.0, F32)).shape == (0, 1)
    np.testing.assert_array_equal(run("NonZero", np.array([[0, 2], [3, 0]], F32)), [[0, 1], [1, 0]])
    y, first, inverse, counts = run("Unique", np.array([2, 1, 1, 3, 4, 3], F32), attrs={"sorted": 0}, num_outputs=4)
    assert y.tolist() == [2, 1, 3, 4] and first.tolist() == [0, 1, 3, 4]
    assert inverse.tolist() == [0, 1, 1, 2, 3, 2] and counts.tolist() == [1, 2, 2, 1]
    x = np.arange(6, dtype=F32).reshape(2, 3)
    np.testing.assert_array_equal(run("Compress", x, np.array([True, False])), [0])  # flattened, short condition
    with pytest.raises(ExecutionError):
        run("Compress", x, np.array([0, 0, 0, 1], bool), attrs={"axis": 1})
    (t,) = infer("NonZero", [TensorType(F32, ("N", 3))])
    assert t == TensorType(I64, (2, None))
    for op in ("NonZero", "Unique", "Compress", "TopK"):
        assert lookup("", op).fusion is FusionClass.OPAQUE
    for op in ("ArgMax", "ArgMin", "CumSum"):
        assert lookup("", op).fusion is FusionClass.REDUCTION
    assert lookup("", "Gather").fusion is FusionClass.INJECTIVE
