"""MaxPool / AveragePool / global pools on the llvm backend against the reference (bit-exact averages)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.llvm._gc_util import assert_close, assert_generated, run_both, single_op_model

WINDOWS = [
    ((1, 4, 12, 12), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 9, 10), {"kernel_shape": [2, 2]}),
    ((1, 2, 11, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 11, 11), {"kernel_shape": [3, 2], "dilations": [2, 2], "pads": [2, 1, 2, 1]}),
    ((1, 2, 10, 10), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 40), {"kernel_shape": [5], "strides": [3], "pads": [2, 2]}),
    ((1, 2, 35, 37), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    # several 16-column runs per row, stride 2 (two loads and a shuffle per tap), edges on both sides
    ((1, 2, 21, 75), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 3, 50), {"kernel_shape": [4], "strides": [2], "pads": [2, 1]}),
]


@pytest.mark.parametrize("x_shape,attrs", WINDOWS)
def test_maxpool(x_shape, attrs):
    got, want, desc = run_both(single_op_model("MaxPool", {"x": x_shape}, {}, attrs))
    assert_generated(desc, "MaxPool")
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_shape,attrs", WINDOWS)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_averagepool(x_shape, attrs, include_pad):
    attrs = dict(attrs, count_include_pad=include_pad)
    got, want, desc = run_both(single_op_model("AveragePool", {"x": x_shape}, {}, attrs, opset=19))  # dilations
    assert_generated(desc, "AveragePool")
    np.testing.assert_array_equal(got, want)


def test_maxpool_indices_declined():
    model = single_op_model("MaxPool", {"x": (1, 1, 4, 4)}, {}, {"kernel_shape": [2, 2]}, n_outputs=2)
    _, _, desc = run_both(model)
    assert "MaxPool" in desc["fallback_ops"]


def test_maxpool_nan_propagates():
    import graphc

    model = single_op_model("MaxPool", {"x": (1, 1, 4, 4)}, {}, {"kernel_shape": [2, 2], "strides": [2, 2]})
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    got = graphc.compile(model, target="llvm").run({"x": x})
    got = got[0] if isinstance(got, (list, tuple)) else next(iter(got.values()))
    assert np.isnan(got[0, 0, 0, 0]) and got[0, 0, 1, 1] == 15


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("x_shape", [(1, 8, 7, 7), (2, 3, 5, 3), (1, 4, 33)])
def test_global_pools(op, x_shape):
    got, want, desc = run_both(single_op_model(op, {"x": x_shape}, {}))
    assert_generated(desc, op)
    assert_close(got, want, rtol=1e-6)
