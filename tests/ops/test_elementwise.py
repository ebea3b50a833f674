"""Elementwise ops and Cast: dtype rules, integer semantics, opset-dependent inputs, shape rules, costs."""

from functools import partial

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto

from graphc.errors import ExecutionError
from graphc.ir.types import TensorType
from graphc.ops import lookup

from tests.ops import util

F32 = np.float32


node_ctx = partial(util.node_ctx, opset=18)
run = partial(util.run, opset=18)


def test_string_casts_both_ways():
    text = run("Cast", np.array([1.5, -np.inf, np.nan, 3], F32), attrs={"to": TensorProto.STRING})
    assert text.dtype == object and text.tolist() == ["1.5", "-INF", "NaN", "3.0"]
    back = run("Cast", np.array(["0.25", "+INF", "-1e-3", "NaN"], dtype=object), attrs={"to": TensorProto.FLOAT})
    assert back.dtype == F32
    np.testing.assert_array_equal(back, np.array([0.25, np.inf, -1e-3, np.nan], F32))
    ints = run("Cast", np.array(["9007199254740993", "-7"], dtype=object), attrs={"to": TensorProto.INT64})
    assert ints.tolist() == [9007199254740993, -7]  # parsed as integers, not through float64


def test_float8_saturate_attribute():
    x = np.array([1e6, -np.inf, np.nan, 0.5], F32)
    sat = run("Cast", x, attrs={"to": TensorProto.FLOAT8E4M3FN}, opset=19)
    assert sat.dtype == ml_dtypes.float8_e4m3fn
    assert sat.astype(F32)[:2].tolist() == [448, -448] and np.isnan(sat.astype(F32)[2])
    raw = run("Cast", x, attrs={"to": TensorProto.FLOAT8E4M3FN, "saturate": 0}, opset=19).astype(F32)
    assert np.isnan(raw[:3]).all() and raw[3] == 0.5
    e5m2 = run("Cast", x, attrs={"to": TensorProto.FLOAT8E5M2, "saturate": 0}, opset=19).astype(F32)
    assert e5m2[0] == np.inf and e5m2[1] == -np.inf


def test_sub_byte_and_e8m0_casts():
    y = run("Cast", np.array([-9, 7, 8, 2.7], F32), attrs={"to": TensorProto.INT4}, opset=21)
    assert y.dtype == ml_dtypes.int4 and y.astype(np.int8).tolist() == [7, 7, -8, 2]  # truncate, then wrap
    x = np.array([1.5, 1.25, 4.0, 0.75], F32)
    codes = {mode: run("Cast", x, attrs={"to": TensorProto.FLOAT8E8M0, "round_mode": mode}, opset=25).astype(F32)
             for mode in ("up", "down", "nearest")}
    assert codes["up"].tolist() == [2, 2, 4, 1]
    assert codes["down"].tolist() == [1, 1, 4, 0.5]
    assert codes["nearest"].tolist() == [2, 1, 4, 1]
    back = run("Cast", codes["up"].astype(ml_dtypes.float8_e8m0fnu), attrs={"to": TensorProto.FLOAT16}, opset=25)
    assert back.dtype == np.float16 and back.tolist() == [2, 2, 4, 1]


def test_cast_like_and_bitcast():
    y = run("CastLike", np.array([1.7, -2.2], F32), np.zeros(0, ml_dtypes.bfloat16), opset=19)
    assert y.dtype == ml_dtypes.bfloat16
    bits = run("BitCast", np.array(1.0, F32), attrs={"to": TensorProto.INT32}, opset=26)
    assert bits.shape == () and bits.dtype == np.int32 and int(bits) == 0x3F800000
    with pytest.raises(ExecutionError):
        run("BitCast", np.array([1.0], F32), attrs={"to": TensorProto.INT64}, opset=26)


def test_integer_div_and_mod_semantics():
    a = np.array([-7, 7, -7, 7, 5], np.int32)
    b = np.array([2, -2, -2, 2, 0], np.int32)
    div = run("Div", a, b)
    assert div.dtype == np.int32 and div.tolist() == [-3, -3, 3, 3, 0]  # truncates; /0 gives 0
    assert run("Mod", a, b).tolist() == [1, -1, -1, 1, 0]  # sign of the divisor
    assert run("Mod", a, b, attrs={"fmod": 1}).tolist() == [-1, 1, -1, 1, 0]  # sign of the dividend
    u = run("Div", np.array([200], np.uint8), np.array([3], np.uint8))
    assert u.dtype == np.uint8 and u.tolist() == [66]


def test_pow_keeps_the_base_dtype():
    assert run("Pow", np.array([2, 3], np.int64), np.array([0.5, 2], F32)).dtype == np.int64
    y = run("Pow", np.array([2, 4], np.int32), np.array([-1, 3], np.int64))
    assert y.dtype == np.int32 and y.tolist() == [0, 64]
    z = run("Pow", np.array([3.0], F32), np.array([2], np.int64))
    assert z.dtype == F32 and z.tolist() == [9.0]
    h = run("Pow", np.array([2.0], np.float16), np.array([3.0], F32))
    assert h.dtype == np.float16 and h.tolist() == [8.0]


def test_clip_attributes_before_11_inputs_after():
    x = np.array([-3, 0.5, 9], F32)
    assert run("Clip", x, attrs={"min": -1.0, "max": 1.0}, opset=6).tolist() == [-1, 0.5, 1]
    assert run("Clip", x, opset=6).tolist() == x.tolist()  # schema defaults: +-FLT_MAX
    assert run("Clip", x, np.array(0, F32), None, opset=13).tolist() == [0, 0.5, 9]
    assert run("Clip", x, None, np.array(2, F32), opset=13).tolist() == [-3, 0.5, 2]
    assert run("Clip", x, np.array(5, F32), np.array(1, F32), opset=13).tolist() == [1, 1, 1]  # min > max
    ints = run("Clip", np.array([-5, 5], np.int8), np.array(-1, np.int8), np.array(1, np.int8), opset=13)
    assert ints.dtype == np.int8 and ints.tolist() == [-1, 1]


def test_narrow_floats_and_attributes_keep_dtype():
    h = np.array([-2.0, 0.0, 3.0], np.float16)
    for op, attrs in [("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Selu", {}), ("Gelu", {"approximate": "tanh"}),
                      ("Sigmoid", {}), ("Erf", {}), ("HardSwish", {}), ("Softplus", {}), ("Mish", {})]:
        assert run(op, h, attrs=attrs, opset=20).dtype == np.float16, op
    b = run("Exp", np.array([0.0, 1.0], ml_dtypes.bfloat16))
    assert b.dtype == ml_dtypes.bfloat16 and b.astype(F32)[0] == 1
    assert run("Mean", np.array([1, 2], F32), np.array([2, 4], F32)).dtype == F32


def test_activation_values():
    x = np.array([-1.0, 0.0, 2.0], np.float64)
    np.testing.assert_allclose(run("Gelu", x, opset=20), [-0.15865525393145707, 0, 1.9544997361036416])
    assert run("Softplus", np.array([1000.0], F32)).tolist() == [1000.0]  # no overflow
    assert run("Sigmoid", np.array([-1000.0, 1000.0], F32)).tolist() == [0.0, 1.0]
    assert run("Round", np.array([0.5, 1.5, 2.5, -0.5], F32)).tolist() == [0, 2, 2, -0.0]
    inf = np.array([-np.inf, np.inf, 1.0], F32)
    assert run("IsInf", inf, attrs={"detect_negative": 0}).tolist() == [False, True, False]
    assert run("IsInf", inf, attrs={"detect_positive": 0}).tolist() == [True, False, False]
    assert run("Shrink", np.array([-3, 0, 3], np.int8), attrs={"bias": 1.0, "lambd": 1.5}).tolist() == [-2, 0, 2]


def test_bitshift_and_logic():
    x = np.array([1, 128], np.uint8)
    assert run("BitShift", x, np.array([1, 1], np.uint8), attrs={"direction": "LEFT"}).tolist() == [2, 0]
    assert run("BitShift", x, np.array([1, 1], np.uint8), attrs={"direction": "RIGHT"}).tolist() == [0, 64]
    assert run("Xor", np.array([True, True]), np.array([True, False])).dtype == np.bool_
    s = run("Equal", np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object), opset=19)
    assert s.dtype == np.bool_ and s.tolist() == [True, False]


def test_shape_rules_with_symbolic_dims():
    x, bias = TensorType(F32, ("N", 1, 3)), TensorType(F32, (4, 3))
    (out,) = lookup("", "Add").infer(node_ctx("Add", [x, bias]))
    assert out == TensorType(F32, ("N", 4, 3))
    (out,) = lookup("", "Less").infer(node_ctx("Less", [x, bias]))
    assert out == TensorType(np.bool_, ("N", 4, 3))
    cond = TensorType(np.bool_, ("N", 1, 1))
    (out,) = lookup("", "Where").infer(node_ctx("Where", [cond, x, bias]))
    assert out == TensorType(F32, ("N", 4, 3))
    (out,) = lookup("", "Cast").infer(node_ctx("Cast", [x], {"to": TensorProto.FLOAT16}))
    assert out == TensorType(np.float16, ("N", 1, 3))
    (out,) = lookup("", "CastLike").infer(node_ctx("CastLike", [x, TensorType(np.int8, (1,))]))
    assert out == TensorType(np.int8, ("N", 1, 3))
    (out,) = lookup("", "Pow").infer(node_ctx("Pow", [TensorType(np.int32, ("B",)), TensorType(F32, ())]))
    assert out == TensorType(np.int32, ("B",))


def test_cost_counts_output_elements():
    ctx = node_ctx("Exp", [TensorType(F32, (2, 3))])
    ctx.node.outputs[0].type = TensorType(F32, (2, 3))
    cost = lookup("", "Exp").cost(ctx)
    assert (cost.bytes_read, cost.bytes_written) == (24, 24)
    assert cost.flops == 6 * lookup("", "Exp").flops_per_element > 6  # transcendental: more than one FLOP
    ctx = node_ctx("Add", [TensorType(F32, (2, 3)), TensorType(F32, (3,))])
    ctx.node.outputs[0].type = TensorType(F32, (2, 3))
    assert lookup("", "Add").cost(ctx).flops == 6
