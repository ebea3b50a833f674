"""Conv on the llvm backend (implicit GEMM with im2col packing, 1x1 direct, depthwise) against the reference."""

from __future__ import annotations

import numpy as np
import pytest

from tests.llvm._gc_util import assert_close, assert_generated, run_both, single_op_model

RNG = np.random.default_rng(3)

CASES = [
    ((1, 3, 17, 19), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 16, 20, 20), (32, 16, 1, 1), {}),
    ((2, 16, 9, 9), (20, 16, 3, 3), {"strides": [2, 2], "pads": [1, 0, 2, 1]}),
    ((1, 3, 30, 30), (16, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((1, 8, 12, 12), (8, 4, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ((1, 8, 12, 13), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1]}),
    ((1, 8, 12, 13), (16, 1, 3, 3), {"group": 8, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 4, 11, 11), (6, 4, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((1, 4, 11, 11), (6, 4, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 11, 11), (6, 4, 3, 2), {"auto_pad": "SAME_LOWER"}),
    ((1, 4, 21), (6, 4, 3), {"pads": [1, 1], "strides": [2]}),
    ((1, 64, 7, 7), (72, 64, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 32, 28, 28), (64, 32, 1, 1), {"strides": [2, 2]}),
    ((3, 5, 6, 7), (9, 5, 2, 2), {}),
    ((1, 2, 5, 5), (3, 2, 5, 5), {"pads": [4, 4, 4, 4]}),
    # depthwise rows of several 16-column runs, edges on both sides: stride 2, a 5x5 stride 1, dilation 2
    ((2, 4, 30, 41), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 3, 9, 37), (3, 1, 5, 5), {"group": 3, "pads": [2, 2, 2, 2]}),
    ((1, 3, 9, 37), (3, 1, 3, 3), {"group": 3, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
]


@pytest.mark.parametrize("x_shape,w_shape,attrs", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(x_shape, w_shape, attrs, bias):
    consts = {"w": RNG.standard_normal(w_shape)}
    if bias:
        consts["b"] = RNG.standard_normal(w_shape[0])
    got, want, desc = run_both(single_op_model("Conv", {"x": x_shape}, consts, attrs))
    assert_generated(desc, "Conv")
    assert_close(got, want)


@pytest.mark.parametrize("x_shape,w_shape,attrs", [CASES[0], CASES[1], CASES[5]])
def test_conv_relu_fused(x_shape, w_shape, attrs):
    consts = {"w": RNG.standard_normal(w_shape), "b": RNG.standard_normal(w_shape[0])}
    got, want, desc = run_both(single_op_model("Conv", {"x": x_shape}, consts, attrs, relu=True))
    assert_generated(desc, "conv+epilogue")
    assert (got >= 0).all()
    assert_close(got, want)


def test_conv_runtime_weights_declined():
    got, want, desc = run_both(single_op_model("Conv", {"x": (1, 2, 5, 5), "w": (3, 2, 3, 3)}, {}))
    assert "Conv" in desc["fallback_ops"]
    assert_close(got, want)
