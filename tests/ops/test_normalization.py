"""Normalization ops: formulas, dtypes of statistics outputs, opset-specific parameter layouts, shape rules."""

from __future__ import annotations

from functools import partial

import numpy as np

from graphc.ir import TensorType
from graphc.ops import FusionClass

from tests.ops import util


node_ctx = partial(util.node_ctx, opset=21)
run = partial(util.run, opset=21)


def test_batch_norm_inference_formula_and_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    s, b, m = (rng.standard_normal(3).astype(np.float32) for _ in range(3))
    v = rng.random(3).astype(np.float32) + 0.5
    y = run("BatchNormalization", x, s, b, m, v, attrs={"epsilon": 1e-3})
    c = (slice(None), None, None)
    np.testing.assert_allclose(y, (x - m[c]) / np.sqrt(v[c] + 1e-3) * s[c] + b[c], rtol=1e-5, atol=1e-5)
    assert y.dtype == np.float32
    ctx = node_ctx("BatchNormalization", [TensorType(np.float32, ("N", 3, "H", "W")), s, b, m, v])
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, ("N", 3, "H", "W"))]
    assert ctx.opdef.fusion == FusionClass.REDUCTION


def test_batch_norm_training_updates_running_stats():
    x = np.array([[[1.0, 3.0]], [[5.0, 7.0]]], np.float32)  # (N=2, C=1, 2): mean 4, var 5
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    y, rm, rv = run("BatchNormalization", x, one, zero, zero, one, attrs={"training_mode": 1, "momentum": 0.5},
                    opset=15, num_outputs=3)
    np.testing.assert_allclose(rm, [2.0])
    np.testing.assert_allclose(rv, [3.0])
    np.testing.assert_allclose(y.reshape(-1), (np.array([1, 3, 5, 7]) - 4) / np.sqrt(5 + 1e-5), rtol=1e-5)


def test_layer_norm_statistics_are_float32_for_float16_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8)).astype(np.float16)
    scale, bias = np.ones(8, np.float16), np.zeros(8, np.float16)
    y, mean, inv_std = run("LayerNormalization", x, scale, bias, attrs={"axis": -1}, opset=17, num_outputs=3)
    assert y.dtype == np.float16 and mean.dtype == np.float32 and inv_std.dtype == np.float32
    assert mean.shape == (2, 3, 1)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(mean[..., 0], x32.mean(-1), rtol=1e-5, atol=1e-6)
    ctx = node_ctx("LayerNormalization", [TensorType(np.float16, ("B", "S", 8)), scale, bias], {"axis": 1},
                   opset=17, num_outputs=3)
    assert [t.shape for t in ctx.opdef.infer(ctx)] == [("B", "S", 8), ("B", 1, 1), ("B", 1, 1)]


def test_group_norm_parameters_per_group_before_21_per_channel_from_21():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 4, 3)).astype(np.float32)
    normed = run("GroupNormalization", x, np.ones(4, np.float32), np.zeros(4, np.float32), attrs={"num_groups": 2})
    g = x.reshape(1, 2, 6)
    expected = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(normed, expected, rtol=1e-5, atol=1e-5)
    per_channel = run("GroupNormalization", x, np.arange(4, dtype=np.float32), np.zeros(4, np.float32),
                      attrs={"num_groups": 2})
    np.testing.assert_allclose(per_channel, expected * np.arange(4).reshape(1, 4, 1), rtol=1e-5, atol=1e-5)
    per_group = run("GroupNormalization", x, np.array([2, 3], np.float32), np.array([1, 0], np.float32),
                    attrs={"num_groups": 2}, opset=18)
    np.testing.assert_allclose(per_group, expected * np.array([2, 2, 3, 3]).reshape(1, 4, 1)
                               + np.array([1, 1, 0, 0]).reshape(1, 4, 1), rtol=1e-5, atol=1e-5)


def test_lrn_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 2, 2)).astype(np.float32)
    size, alpha, beta, bias = 4, 0.1, 0.75, 2.0
    y = run("LRN", x, attrs={"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    for c in range(6):
        lo, hi = max(0, c - (size - 1) // 2), min(5, c + size // 2)
        sq = (x[:, lo:hi + 1] ** 2).sum(1)
        np.testing.assert_allclose(y[:, c], x[:, c] / (bias + alpha / size * sq) ** beta, rtol=1e-5)


def test_rms_and_lp_normalization():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(run("LpNormalization", x, attrs={"p": 2}), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(run("LpNormalization", x, attrs={"p": 1}), [[3 / 7, 4 / 7], [0.0, 0.0]], rtol=1e-6)
    y = run("RMSNormalization", x[:1], np.array([1.0, 2.0], np.float32), attrs={"epsilon": 0.0}, opset=23)
    rms = np.sqrt(12.5)
    np.testing.assert_allclose(y, [[3 / rms, 8 / rms]], rtol=1e-6)
