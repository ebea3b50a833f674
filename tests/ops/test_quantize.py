"""Quantization ops: scale layouts (per tensor / axis / block), rounding and saturation, dtypes, shapes, costs."""

from functools import partial

import ml_dtypes
import numpy as np
from onnx import TensorProto

from graphc.ir.types import TensorType
from graphc.ops import lookup

from tests.ops import util

F32 = np.float32


node_ctx = partial(util.node_ctx, opset=21)
run = partial(util.run, opset=21)


def test_rounds_half_to_even_before_adding_the_zero_point_and_saturates():
    x = np.array([2.5, 3.5, -2.5, 100, -100], F32)
    y = run("QuantizeLinear", x, np.array(1, F32), np.array(1, np.int8))
    assert y.dtype == np.int8 and y.tolist() == [3, 5, -1, 101, -99]
    y4 = run("QuantizeLinear", x, np.array(1, F32), np.array(0, ml_dtypes.int4))
    assert y4.dtype == ml_dtypes.int4 and y4.astype(np.int8).tolist() == [2, 4, -2, 7, -8]


def test_output_dtype_attribute_and_default():
    x = np.array([-1.0, 1.0], F32)
    assert run("QuantizeLinear", x, np.array(0.5, F32)).dtype == np.uint8
    y = run("QuantizeLinear", x, np.array(0.5, F32), attrs={"output_dtype": TensorProto.INT8})
    assert y.dtype == np.int8 and y.tolist() == [-2, 2]
    f8 = run("QuantizeLinear", np.array([1e4], F32), np.array(1, F32), attrs={"output_dtype": TensorProto.FLOAT8E4M3FN})
    assert f8.astype(F32).tolist() == [448]  # saturates by default


def test_per_axis_and_blocked_scales():
    x = np.arange(12, dtype=F32).reshape(2, 6)
    per_axis = run("QuantizeLinear", x, np.array([1, 2], F32), np.array([0, 10], np.uint8), attrs={"axis": -2})
    np.testing.assert_array_equal(per_axis, np.rint(x / [[1], [2]]) + [[0], [10]])
    # blocks of 4 along axis 1: the second block is short (2 elements)
    scale = np.array([[1, 2], [4, 8]], F32)
    blocked = run("QuantizeLinear", x, scale, attrs={"axis": 1, "block_size": 4})
    full = np.repeat(scale, 4, axis=1)[:, :6]
    np.testing.assert_array_equal(blocked, np.rint(x / full))
    back = run("DequantizeLinear", blocked, scale, attrs={"axis": 1, "block_size": 4})
    np.testing.assert_array_equal(back, blocked.astype(F32) * full)


def test_dequantize_dtypes():
    x = np.array([0, 255], np.uint8)
    y = run("DequantizeLinear", x, np.array(0.5, np.float16), np.array(128, np.uint8))
    assert y.dtype == np.float16 and y.tolist() == [-64, 63.5]
    y = run("DequantizeLinear", x, np.array(0.5, F32), attrs={"output_dtype": TensorProto.BFLOAT16}, opset=23)
    assert y.dtype == ml_dtypes.bfloat16 and y.astype(F32).tolist() == [0, 127.5]
    y = run("DequantizeLinear", np.array([-8, 7], ml_dtypes.int4), np.array([2], F32))
    assert y.dtype == F32 and y.tolist() == [-16, 14]


def test_dynamic_quantize_includes_zero_and_survives_all_zero_input():
    y, scale, zp = run("DynamicQuantizeLinear", np.array([1.0, 3.0, 4.0], F32), opset=11)
    assert (y.dtype, scale.dtype, zp.dtype, scale.shape, zp.shape) == (np.uint8, F32, np.uint8, (), ())
    assert int(zp) == 0 and np.isclose(scale, 4 / 255) and y.tolist() == [64, 191, 255]
    y, scale, zp = run("DynamicQuantizeLinear", np.zeros(3, F32), opset=11)
    assert np.isfinite(scale) and scale > 0 and y.tolist() == [0, 0, 0] and int(zp) == 0


def test_matmul_integer_per_row_and_per_column_zero_points():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (2, 3, 4), dtype=np.uint8)
    b = rng.integers(-128, 127, (4, 5), dtype=np.int8)
    a_zp, b_zp = np.array([3, 200, 7], np.uint8), rng.integers(-5, 5, 5, dtype=np.int8)
    y = run("MatMulInteger", a, b, a_zp, b_zp, opset=10)
    expected = (a.astype(np.int64) - a_zp[:, None]) @ (b.astype(np.int64) - b_zp)
    assert y.dtype == np.int32 and (y == expected).all()


def test_qlinear_matmul_per_row_scales():
    a = np.array([[10, 20], [30, 40]], np.uint8)
    b = np.array([[1, 2], [3, 4]], np.uint8)
    one = np.array(1, F32)
    zero = np.array(0, np.uint8)
    y = run("QLinearMatMul", a, np.array([1, 0.5], F32), zero, b, one, zero, np.array(2, F32), np.array(5, np.uint8))
    # row 1 is [37.5, 55] before the zero point: rounding first (to even) gives 38, not rint(42.5) = 42
    expected = np.clip(np.rint(a.astype(F32) @ b * np.array([[1], [0.5]]) / 2) + 5, 0, 255)
    assert y.dtype == np.uint8 and (y == expected).all()


def test_shape_rules_and_cost():
    a, b = TensorType(np.uint8, ("N", 3, 4)), TensorType(np.int8, (4, 5))
    op = lookup("", "MatMulInteger")
    (out,) = op.infer(node_ctx("MatMulInteger", [a, b], opset=10))
    assert out == TensorType(np.int32, ("N", 3, 5))
    ctx = node_ctx("MatMulInteger", [TensorType(np.uint8, (2, 3, 4)), b], opset=10)
    ctx.node.outputs[0].type = TensorType(np.int32, (2, 3, 5))
    assert op.cost(ctx).flops == 2 * 2 * 3 * 5 * 4
    scalar = TensorType(F32, ())
    (out,) = lookup("", "QLinearMatMul").infer(node_ctx(
        "QLinearMatMul", [TensorType(np.int8, (3, 4)), scalar, TensorType(np.int8, ()), TensorType(np.int8, (4,)),
                          scalar, TensorType(np.int8, ()), scalar, TensorType(np.int8, ())]))
    assert out == TensorType(np.int8, (3,))
    x = TensorType(F32, ("N", 8))
    (out,) = lookup("", "QuantizeLinear").infer(node_ctx("QuantizeLinear", [x, scalar], {"output_dtype": 22}))
    assert out == TensorType(ml_dtypes.int4, ("N", 8))
    (out,) = lookup("", "DequantizeLinear").infer(node_ctx("DequantizeLinear", [TensorType(np.int8, ("N", 8)),
                                                                                 TensorType(np.float16, (8,))]))
    assert out == TensorType(np.float16, ("N", 8))
