"""Conv family, Resize/Upsample, Dropout: shape rules with symbolic dims, costs, and behaviour the ONNX node
tests leave out (checked against naive loops or algebraic identities)."""

from __future__ import annotations

import itertools
from functools import partial

import numpy as np
import pytest

from graphc.ir import TensorType
from graphc.ops import FusionClass

from tests.ops import util


node_ctx = partial(util.node_ctx, opset=19)
run = partial(util.run, opset=19)


def _naive_conv(x, w, b, strides, pads, dilations, group):
    """Direct-loop 2-D convolution with explicit pads [top, left, bottom, right]."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, m, oh, ow))
    mg = m // group
    for b_, o, i, j in itertools.product(range(n), range(m), range(oh), range(ow)):
        g = o // mg
        patch = xp[b_, g * cg:(g + 1) * cg, i * strides[0]:i * strides[0] + (kh - 1) * dilations[0] + 1:dilations[0],
                   j * strides[1]:j * strides[1] + (kw - 1) * dilations[1] + 1:dilations[1]]
        y[b_, o, i, j] = np.sum(patch * w[o]) + (b[o] if b is not None else 0)
    return y


@pytest.mark.parametrize("strides,pads,dilations,group", [
    ((1, 1), (1, 1, 1, 1), (1, 1), 1),
    ((2, 1), (0, 2, 1, 0), (1, 2), 2),
    ((1, 2), (2, 2, 2, 2), (2, 1), 4),  # depthwise
])
def test_conv_matches_naive_loops(strides, pads, dilations, group):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((8, 4 // group, 3, 2)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y = run("Conv", x, w, b, attrs={"strides": list(strides), "pads": list(pads), "dilations": list(dilations),
                                "group": group})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, _naive_conv(x, w, b, strides, pads, dilations, group), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("auto_pad,pads", [("SAME_UPPER", (0, 0, 1, 1)), ("SAME_LOWER", (1, 1, 0, 0))])
def test_conv_same_padding_puts_the_odd_pad_where_asked(auto_pad, pads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    w = rng.standard_normal((1, 1, 2, 2)).astype(np.float32)
    y = run("Conv", x, w, attrs={"auto_pad": auto_pad})
    assert y.shape == (1, 1, 5, 5)
    np.testing.assert_allclose(y, _naive_conv(x, w, None, (1, 1), pads, (1, 1), 1), rtol=1e-5, atol=1e-5)


def test_conv_float16_stays_float16():
    x = np.ones((1, 2, 4, 4), np.float16)
    w = np.ones((3, 2, 3, 3), np.float16)
    y = run("Conv", x, w)
    assert y.dtype == np.float16 and y.shape == (1, 3, 2, 2) and np.all(y == 18)


def test_conv_shape_keeps_symbolic_batch_and_cost():
    w = np.zeros((64, 3, 7, 7), np.float32)
    ctx = node_ctx("Conv", [TensorType(np.float32, ("N", 3, 224, 224)), w], {"strides": [2, 2], "pads": [3, 3, 3, 3]})
    (t,) = ctx.opdef.infer(ctx)
    assert t == TensorType(np.float32, ("N", 64, 112, 112))
    static = node_ctx("Conv", [TensorType(np.float32, (1, 3, 224, 224)), w], {"strides": [2, 2], "pads": [3, 3, 3, 3]})
    assert static.opdef.cost(static).flops == 2 * 64 * 112 * 112 * 3 * 7 * 7
    assert ctx.opdef.fusion == FusionClass.COMPLEX


def test_conv_unknown_spatial_dim_gives_none():
    ctx = node_ctx("Conv", [TensorType(np.float32, ("N", 3, "H", 32)), np.zeros((8, 3, 3, 3), np.float32)])
    (t,) = ctx.opdef.infer(ctx)
    assert t.shape == ("N", 8, None, 30)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2], "pads": [1, 0, 0, 1]},
    {"strides": [2, 3], "dilations": [2, 1], "group": 2},
    {"strides": [1, 2], "pads": [1, 1, 1, 1], "group": 2},
])
def test_conv_transpose_is_the_adjoint_of_conv(attrs):
    """<Conv(x), y> == <x, ConvTranspose(y)> for the same weights and geometry."""
    rng = np.random.default_rng(2)
    group = attrs.get("group", 1)
    x = rng.standard_normal((1, 4, 9, 8))
    w = rng.standard_normal((6, 4 // group, 3, 2))
    y = run("Conv", x, w, attrs=attrs)
    r = rng.standard_normal(y.shape)
    # ConvTranspose's weights (C_in, M/group, k) map its input channels (Conv's outputs) back: the same array
    xt = run("ConvTranspose", r, w, attrs=dict(attrs, output_shape=list(x.shape[2:])))
    assert xt.shape == x.shape
    np.testing.assert_allclose(np.sum(y * r), np.sum(x * xt), rtol=1e-9)


def test_conv_transpose_shape_and_cost():
    w = np.zeros((8, 4, 3, 3), np.float32)
    ctx = node_ctx("ConvTranspose", [TensorType(np.float32, ("N", 8, 10, 10)), w],
                   {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]})
    (t,) = ctx.opdef.infer(ctx)
    assert t.shape == ("N", 4, 20, 20)
    static = node_ctx("ConvTranspose", [TensorType(np.float32, (1, 8, 10, 10)), w], {"strides": [2, 2]})
    assert static.opdef.cost(static).flops == 2 * 8 * 10 * 10 * 4 * 3 * 3


def test_conv_integer_subtracts_per_channel_weight_zero_points():
    x = np.array([[[[1, 2], [3, 4]]]], np.uint8)
    w = np.array([[[[5]]], [[[7]]]], np.uint8)
    y = run("ConvInteger", x, w, np.array(1, np.uint8), np.array([4, 5], np.uint8))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y[0, 0], (x[0, 0].astype(int) - 1) * 1)
    np.testing.assert_array_equal(y[0, 1], (x[0, 0].astype(int) - 1) * 2)


def test_resize_shape_from_constant_scales_and_sizes():
    x = TensorType(np.float32, ("N", 3, 10, 20))
    ctx = node_ctx("Resize", [x, None, np.array([1, 1, 2, 0.5], np.float32)], {"mode": "linear"})
    assert ctx.opdef.infer(ctx)[0].shape == ("N", 3, 20, 10)
    ctx = node_ctx("Resize", [x, None, None, np.array([5, 5], np.int64)],
                   {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"})
    assert ctx.opdef.infer(ctx)[0].shape == ("N", 3, 3, 5)
    ctx = node_ctx("Resize", [x, None, None, TensorType(np.int64, (4,))])
    assert ctx.opdef.infer(ctx)[0].shape == (None, None, None, None)


def test_resize_opset10_layout_and_upsample_attribute():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    expected = np.repeat(np.repeat(x, 2, axis=2), 3, axis=3)
    scales = np.array([1, 1, 2, 3], np.float32)
    np.testing.assert_array_equal(run("Resize", x, scales, attrs={"mode": "nearest"}, opset=10), expected)
    np.testing.assert_array_equal(run("Upsample", x, attrs={"scales": [1.0, 1.0, 2.0, 3.0]}, opset=7), expected)
    np.testing.assert_array_equal(run("Upsample", x, scales, opset=9), expected)


def test_resize_integer_data_rounds_and_saturates():
    x = np.array([[[[0, 255, 0]]]], np.uint8)
    scales = np.array([1, 1, 1, 4], np.float32)
    attrs = {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}
    y = run("Resize", x, None, scales, attrs=attrs)
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y[0, 0, 0, :5], [0, 64, 128, 191, 255])  # 63.75, 127.5 (half to even), 191.25
    attrs["mode"] = "cubic"  # overshoots below 0: saturated, not wrapped
    floats = run("Resize", x.astype(np.float32), None, scales, attrs=attrs)
    assert floats.min() < 0
    np.testing.assert_array_equal(run("Resize", x, None, scales, attrs=attrs), np.clip(np.rint(floats), 0, 255))


def test_resize_pytorch_half_pixel_single_output_reads_position_zero():
    x = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)
    y = run("Resize", x, None, None, np.array([1, 1, 1, 1], np.int64),
            attrs={"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel"})
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == pytest.approx(1.0)


def test_dropout_modes():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y, mask = run("Dropout", x, num_outputs=2, opset=13)
    np.testing.assert_array_equal(y, x)
    assert mask.dtype == np.bool_ and mask.all()
    y, mask = run("Dropout", x, np.array(0.0, np.float32), np.array(True), num_outputs=2, opset=13)
    assert mask.all() and np.array_equal(y, x)
    y, mask = run("Dropout", x, np.array(0.5, np.float32), np.array(True), attrs={"seed": 3}, num_outputs=2, opset=13)
    np.testing.assert_allclose(y, np.where(mask, x * 2, 0))
    _, mask = run("Dropout", x, attrs={"ratio": 0.3}, num_outputs=2, opset=7)
    assert mask.dtype == np.float32
