"""Pooling ops: shape rules with symbolic dims, costs, MaxPool indices and ceil-mode averages against brute
force."""

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


def test_maxpool_shape_ceil_mode_symbolic_batch_and_indices_type():
    ctx = node_ctx("MaxPool", [TensorType(np.float32, ("N", 64, 112, 112))],
                   {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, num_outputs=2)
    y, idx = ctx.opdef.infer(ctx)
    assert y == TensorType(np.float32, ("N", 64, 56, 56))
    assert idx == TensorType(np.int64, ("N", 64, 56, 56))
    assert ctx.opdef.fusion == FusionClass.REDUCTION


def test_pool_cost_is_output_elements_times_kernel():
    ctx = node_ctx("AveragePool", [TensorType(np.float32, (1, 8, 10, 10))], {"kernel_shape": [2, 2], "strides": [2, 2]})
    assert ctx.opdef.cost(ctx).flops == 8 * 5 * 5 * 4
    ctx = node_ctx("GlobalMaxPool", [TensorType(np.float32, (2, 8, 10, 10))])
    assert ctx.opdef.cost(ctx).flops == 2 * 8 * 10 * 10


@pytest.mark.parametrize("storage_order", [0, 1])
def test_maxpool_indices_point_at_the_max(storage_order):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    y, idx = run("MaxPool", x, attrs={"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 0, 0, 1],
                                      "storage_order": storage_order}, num_outputs=2)
    assert idx.dtype == np.int64
    flat = x.reshape(-1) if storage_order == 0 else x.transpose(0, 1, 3, 2).reshape(-1)
    np.testing.assert_array_equal(flat[idx], y)


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_ceil_mode_matches_brute_force(count_include_pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 6)).astype(np.float32)
    k, s, pb, pe = 3, 2, 1, 1
    y = run("AveragePool", x, attrs={"kernel_shape": [k], "strides": [s], "pads": [pb, pe], "ceil_mode": 1,
                                     "count_include_pad": count_include_pad})
    # windows start at -1, 1, 3, 5 (the last starts inside the input; it runs past the end pad)
    assert y.shape == (1, 2, 4)
    for o in range(4):
        start = o * s - pb
        positions = [p for p in range(start, start + k) if p < 6 + pe]  # never past the declared end pad
        inside = [p for p in positions if 0 <= p < 6]
        count = len(positions) if count_include_pad else len(inside)
        np.testing.assert_allclose(y[..., o], x[..., inside].sum(-1) / count, rtol=1e-6)


def test_lp_pool_and_global_lp_pool():
    x = np.array([[[3.0, -4.0, 0.0, 12.0]]], np.float32)
    np.testing.assert_allclose(run("LpPool", x, attrs={"kernel_shape": [2], "strides": [2], "p": 2}), [[[5.0, 12.0]]])
    np.testing.assert_allclose(run("GlobalLpPool", x, attrs={"p": 1}), [[[19.0]]])


def test_global_average_pool_keeps_dtype_and_symbolic_dims():
    ctx = node_ctx("GlobalAveragePool", [TensorType(np.float16, ("N", 32, "H", "W"))])
    assert ctx.opdef.infer(ctx)[0] == TensorType(np.float16, ("N", 32, 1, 1))
    y = run("GlobalAveragePool", np.full((1, 2, 3, 3), 2, np.float16))
    assert y.dtype == np.float16 and y.shape == (1, 2, 1, 1) and np.all(y == 2)


def test_max_unpool_inverts_max_pool():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    attrs = {"kernel_shape": [2, 2], "strides": [2, 2]}
    y, idx = run("MaxPool", x, attrs=attrs, num_outputs=2)
    up = run("MaxUnpool", y, idx, attrs=attrs)
    kept = up != 0
    assert kept.sum() == y.size
    np.testing.assert_array_equal(up[kept], x[kept])
    for b, c, i, j in itertools.product(range(1), range(2), range(2), range(2)):
        assert up[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() == y[b, c, i, j]
