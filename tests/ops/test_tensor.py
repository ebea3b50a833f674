"""Tensor-manipulation ops: shape rules with symbolic dims, operands that were attributes in older opsets, failures
and fusion classes — what the ONNX node tests (mostly at the newest opset, static shapes) do not cover."""

from functools import partial

import numpy as np
import pytest

from graphc.errors import ExecutionError, ShapeInferenceError
from graphc.ir.types import TensorType
from graphc.ops import FusionClass, lookup

from tests.ops import util

F32, I64 = np.float32, np.int64


node_ctx = partial(util.node_ctx, opset=18)
infer = partial(util.infer, opset=18)
run = partial(util.run, opset=18)


def shape_of(op, shape, consts, dtype=F32, **kw):
    """The single output shape inferred for an input of ``shape`` and constant operands {index: value}."""
    types = [TensorType(dtype, shape)] + [None] * max(consts, default=0)
    (t,) = infer(op, types, consts=consts, **kw)
    return t.shape


@pytest.mark.parametrize("shape, target, attrs, out", [
    (("N", 3, 4), [0, -1], {}, ("N", 12)),
    (("N", 12), [-1, 3, 4], {}, ("N", 3, 4)),
    (("N", 3, 4), [0, 0, 2, 2], {}, ("N", 3, 2, 2)),
    (("N", "C", 4), [0, 2, -1], {}, ("N", 2, None)),  # C*2 is not a model symbol
    ((2, 3, 4), [4, 0, -1], {}, (4, 3, 2)),
    ((0, 3), [0, 3], {"allowzero": 1}, (0, 3)),
    ((2, 3), [3, 0], {"allowzero": 1}, (3, 0)),
])
def test_reshape_rule(shape, target, attrs, out):
    assert shape_of("Reshape", shape, {1: np.array(target, I64)}, attrs=attrs, opset=14) == out


def test_reshape_errors():
    with pytest.raises(ShapeInferenceError):
        shape_of("Reshape", (2, 3), {1: np.array([4, -1], I64)})
    with pytest.raises(ExecutionError):
        run("Reshape", np.zeros((2, 3), F32), np.array([-1, -1], I64))
    with pytest.raises(ExecutionError):
        run("Reshape", np.zeros((2, 3), F32), np.array([4, 2], I64))
    # a non-constant shape of static length still gives the rank
    (t,) = infer("Reshape", [TensorType(F32, (2, 3)), TensorType(I64, (3,))])
    assert t.shape == (None, None, None)


@pytest.mark.parametrize("axis, out", [(1, ("N", 60)), (0, (1, None)), (-1, (None, 5)), (4, (None, 1))])
def test_flatten_rule(axis, out):
    assert shape_of("Flatten", ("N", 3, 4, 5), {}, attrs={"axis": axis}) == out


def test_transpose_concat_split_rules():
    assert shape_of("Transpose", ("N", 3, 4), {}, attrs={"perm": [2, 0, 1]}) == (4, "N", 3)
    assert shape_of("Transpose", ("N", 3, 4), {}) == (4, 3, "N")
    (t,) = infer("Concat", [TensorType(F32, ("N", 3)), TensorType(F32, ("N", 5))], attrs={"axis": -1})
    assert t == TensorType(F32, ("N", 8))
    (t,) = infer("Concat", [TensorType(F32, ("N", 3)), TensorType(F32, ("M", 3))], attrs={"axis": 0})
    assert t.shape == (None, 3)
    ts = infer("Split", [TensorType(F32, ("N", 7))], attrs={"axis": 1, "num_outputs": 3}, num_outputs=3)
    assert [t.shape for t in ts] == [("N", 3), ("N", 3), ("N", 1)]


def test_split_across_opsets():
    x = np.arange(12, dtype=F32).reshape(2, 6)
    a, b = run("Split", x, attrs={"axis": 1, "split": [2, 4]}, opset=11, num_outputs=2)  # attribute before 13
    assert a.shape == (2, 2) and b.shape == (2, 4)
    a, b = run("Split", x, np.array([5, 1], I64), attrs={"axis": 1}, opset=13, num_outputs=2)
    assert a.shape == (2, 5) and b.shape == (2, 1)
    parts = run("Split", np.arange(7, dtype=F32), attrs={"num_outputs": 3}, opset=18, num_outputs=3)
    assert [p.size for p in parts] == [3, 3, 1]
    with pytest.raises(ExecutionError):  # unequal parts are only allowed from opset 18
        run("Split", np.arange(7, dtype=F32), opset=13, num_outputs=3)


def test_squeeze_unsqueeze_across_opsets():
    x = np.zeros((1, 3, 1), F32)
    assert run("Squeeze", x, attrs={"axes": [0]}, opset=11).shape == (3, 1)
    assert run("Squeeze", x, np.array([-1], I64), opset=13).shape == (1, 3)
    assert run("Squeeze", x, opset=13).shape == (3,)
    with pytest.raises(ExecutionError):
        run("Squeeze", x, np.array([1], I64), opset=13)
    assert run("Unsqueeze", x, attrs={"axes": [0, -1]}, opset=11).shape == (1, 1, 3, 1, 1)
    assert shape_of("Unsqueeze", ("N", 3), {1: np.array([0, 3], I64)}, opset=13) == (1, "N", 3, 1)
    assert shape_of("Squeeze", ("N", 1, 3), {1: np.array([1], I64)}, opset=13) == ("N", 3)
    # without axes a symbolic dim might be 1: the rank is unknown
    assert shape_of("Squeeze", ("N", 1, 3), {}, opset=13) is None


def test_slice_rules_and_opset9_attributes():
    x = np.arange(24, dtype=F32).reshape(2, 3, 4)
    y = run("Slice", x, attrs={"starts": [1, -1], "ends": [3, 0], "axes": [1, 2]}, opset=9)
    np.testing.assert_array_equal(y, x[:, 1:3, 3:0])
    y = run("Slice", x, np.array([-1], I64), np.array([-2 ** 63], I64), np.array([2], I64), np.array([-2], I64))
    np.testing.assert_array_equal(y, x[:, :, ::-2])
    consts = {1: np.array([1], I64), 2: np.array([2 ** 63 - 1], I64), 3: np.array([2], I64)}
    assert shape_of("Slice", ("N", 3, 10), consts) == ("N", 3, 9)
    consts[1] = np.array([0], I64)
    assert shape_of("Slice", ("N", 3, "T"), consts) == ("N", 3, "T")
    consts[1], consts[3] = np.array([1], I64), np.array([0], I64)
    assert shape_of("Slice", ("N", 3, 10), consts) == (None, 3, 10)  # N - 1 is no model symbol


def test_pad_across_opsets():
    x = np.arange(6, dtype=F32).reshape(2, 3)
    y = run("Pad", x, attrs={"pads": [0, 1, 1, -1], "value": 7.0}, opset=2)  # pads attribute; negative crops
    np.testing.assert_array_equal(y, [[7, 0, 1], [7, 3, 4], [7, 7, 7]])
    assert y.dtype == F32
    y = run("Pad", x, np.array([2, 2], I64), np.array(0, F32), np.array([1], I64), attrs={"mode": "wrap"}, opset=19)
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (2, 2)], mode="wrap"))
    assert shape_of("Pad", ("N", 3, 8, 8), {1: np.array([0, 0, 1, 1, 0, 0, 1, 1], I64)}, opset=13) == ("N", 3, 10, 10)
    assert shape_of("Pad", ("N", 3), {1: np.array([1, 0, 0, 0], I64)}, opset=13) == (None, 3)


def test_shape_expand_tile_rules():
    assert shape_of("Shape", ("N", 3, 4), {}, attrs={"start": 1}, opset=15) == (2,)
    assert shape_of("Shape", ("N", 3, 4), {}, attrs={"start": -1, "end": -3}, opset=15) == (0,)
    np.testing.assert_array_equal(run("Shape", np.zeros((2, 3, 4)), attrs={"end": -1}, opset=15), [2, 3])
    assert shape_of("Expand", ("N", 1, 4), {1: np.array([3, 1, 5, 1], I64)}) == (3, "N", 5, 4)
    assert shape_of("Tile", ("N", 3), {1: np.array([1, 2], I64)}) == ("N", 6)
    assert shape_of("Tile", ("N", 3), {1: np.array([2, 1], I64)}) == (None, 3)
    y = run("Expand", np.ones((3, 1), F32), np.array([2, 1, 4], I64))
    assert y.shape == (2, 3, 4) and y.flags.writeable


def test_constants_and_generators():
    assert run("Constant", attrs={"value_floats": [1.0, 2.0]}).dtype == F32
    assert run("Constant", attrs={"value_int": 3}).dtype == I64
    (t,) = infer("Constant", [], attrs={"value_ints": [1, 2, 3]})
    assert t == TensorType(I64, (3,))
    y = run("ConstantOfShape", np.array([2, 3], I64), attrs={"value": np.array([5], np.int32)})
    assert y.dtype == np.int32 and y.shape == (2, 3) and (y == 5).all()
    assert run("ConstantOfShape", np.array([2], I64)).dtype == F32
    (t,) = infer("ConstantOfShape", [TensorType(I64, (3,))])
    assert t == TensorType(F32, (None, None, None))
    r = run("Range", np.array(10, np.int32), np.array(0, np.int32), np.array(-3, np.int32))
    assert r.dtype == np.int32 and r.tolist() == [10, 7, 4, 1]
    assert shape_of("Range", (), {0: np.array(0.0, F32), 1: np.array(1.0, F32), 2: np.array(0.25, F32)}) == (4,)
    assert run("EyeLike", np.zeros((2, 3), F32), attrs={"k": 1, "dtype": 7}).dtype == I64


def test_space_depth_roundtrip_and_rules():
    x = np.arange(2 * 8 * 3 * 3, dtype=F32).reshape(2, 8, 3, 3)
    for mode in ("DCR", "CRD"):
        y = run("DepthToSpace", x, attrs={"blocksize": 2, "mode": mode}, opset=13)
        assert y.shape == (2, 2, 6, 6)
        np.testing.assert_array_equal(run("SpaceToDepth", y, attrs={"blocksize": 2, "mode": mode}, opset=28), x)
    assert shape_of("DepthToSpace", ("N", 8, "H", 3), {}, attrs={"blocksize": 2}) == ("N", 2, None, 6)


def test_reverse_sequence_and_col2im():
    x = np.arange(12, dtype=F32).reshape(3, 4)  # batch_axis=0, time_axis=1
    y = run("ReverseSequence", x, np.array([4, 1, 2], I64), attrs={"batch_axis": 0, "time_axis": 1})
    np.testing.assert_array_equal(y, [[3, 2, 1, 0], [4, 5, 6, 7], [9, 8, 10, 11]])
    with pytest.raises(ExecutionError):
        run("ReverseSequence", x, np.array([5, 1, 2], I64), attrs={"batch_axis": 0, "time_axis": 1})
    # Col2Im of an im2col of non-overlapping 2x2 blocks is the image itself
    img = np.arange(16, dtype=F32).reshape(1, 1, 4, 4)
    cols = img.reshape(1, 1, 2, 2, 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(1, 4, 4)
    out = run("Col2Im", cols, np.array([4, 4], I64), np.array([2, 2], I64), attrs={"strides": [2, 2]})
    np.testing.assert_array_equal(out, img)


def test_fusion_classes_and_costs():
    for op in ("Reshape", "Transpose", "Slice", "Concat", "Expand", "Pad", "Flatten", "Squeeze"):
        assert lookup("", op).fusion is FusionClass.INJECTIVE, op
    ctx = node_ctx("Transpose", [TensorType(F32, (2, 3, 4))])
    ctx.node.outputs[0].type = TensorType(F32, (4, 3, 2))
    cost = lookup("", "Transpose").cost(ctx)
    assert (cost.flops, cost.bytes_read, cost.bytes_written) == (0, 96, 96)
