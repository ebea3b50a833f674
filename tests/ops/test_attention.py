"""Attention and friends checked against direct numpy formulations; shape rules with symbolic dims."""

from functools import partial

import numpy as np

from graphc.ir.types import TensorType
from graphc.ops import lookup

from tests.ops import util

F32 = np.float32
RNG = np.random.default_rng(0)


node_ctx = partial(util.node_ctx, opset=24)
run = partial(util.run, opset=24)


def naive_attention(q, k, v, bias):
    """One (query head, KV head) pair at a time, GQA by integer division of the head index."""
    b, hq, sq, d = q.shape
    group = hq // k.shape[1]
    y = np.zeros((b, hq, sq, v.shape[3]), np.float64)
    for i in range(b):
        for h in range(hq):
            s = q[i, h] @ k[i, h // group].T / np.sqrt(d) + bias
            p = np.exp(s - s.max(-1, keepdims=True))
            y[i, h] = (p / p.sum(-1, keepdims=True)) @ v[i, h // group]
    return y


def test_attention_gqa_causal_with_past():
    q = RNG.standard_normal((2, 4, 3, 8)).astype(F32)
    k, v = RNG.standard_normal((2, 2, 3, 8)).astype(F32), RNG.standard_normal((2, 2, 3, 5)).astype(F32)
    pk, pv = RNG.standard_normal((2, 2, 2, 8)).astype(F32), RNG.standard_normal((2, 2, 2, 5)).astype(F32)
    y, present_k, present_v, _ = run("Attention", q, k, v, None, pk, pv, attrs={"is_causal": 1}, num_outputs=3)
    np.testing.assert_array_equal(present_k, np.concatenate([pk, k], 2))
    # bottom-right causal: query i (absolute position 2 + i) sees keys 0 .. 2 + i
    bias = np.where(np.arange(5)[None, :] <= np.arange(3)[:, None] + 2, 0, -np.inf)
    expected = naive_attention(q, present_k, present_v, bias)
    assert y.dtype == F32 and y.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_attention_fully_masked_row_is_zero_and_3d_layout():
    q, k, v = (RNG.standard_normal((1, 2, 4)).astype(F32) for _ in range(3))
    mask = np.array([[True, True], [False, False]])  # the second query attends nothing
    y = run("Attention", q, k, v, mask, attrs={"q_num_heads": 2, "kv_num_heads": 2})[0]
    assert y.shape == (1, 2, 4) and np.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 1], 0)
    heads = lambda x: x.reshape(1, 2, 2, 2).transpose(0, 2, 1, 3)  # noqa: E731
    expected = naive_attention(heads(q), heads(k), heads(v), np.zeros((2, 2)))
    np.testing.assert_allclose(y[0, 0], expected.transpose(0, 2, 1, 3).reshape(1, 2, 4)[0, 0], rtol=1e-5)


def test_attention_shape_rule_symbolic():
    types = [TensorType(F32, ("B", "S", 64)), TensorType(F32, ("B", "T", 32)), TensorType(F32, ("B", "T", 48)),
             None, TensorType(F32, ("B", 2, "P", 16)), TensorType(F32, ("B", 2, "P", 24))]
    ctx = node_ctx("Attention", types, {"q_num_heads": 4, "kv_num_heads": 2}, num_outputs=4)
    y, pk, pv, qk = lookup("", "Attention").infer(ctx)
    assert y == TensorType(F32, ("B", "S", 96))
    assert pk.shape == ("B", 2, None, 16) and pv.shape == ("B", 2, None, 24)
    assert qk.shape == ("B", 4, "S", None)
    static = [TensorType(F32, (1, 4, 3, 8)), TensorType(F32, (1, 2, 5, 8)), TensorType(F32, (1, 2, 5, 6))]
    ctx = node_ctx("Attention", static, {}, num_outputs=1)
    flops = lookup("", "Attention").cost(ctx).flops
    assert flops == 4 * 3 * 5 * (2 * (8 + 6) + 5)


def test_rotary_embedding_matches_complex_rotation():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(F32)  # (B, H, S, D)
    angles = RNG.standard_normal((5, 2)).astype(F32)
    pos = np.array([[4, 0, 2]])
    y = run("RotaryEmbedding", x, np.cos(angles), np.sin(angles), pos, opset=23)
    z = (x[..., :2] + 1j * x[..., 2:]) * np.exp(1j * angles[pos])[:, None]  # halves are (real, imag)
    np.testing.assert_allclose(y, np.concatenate([z.real, z.imag], -1), rtol=1e-5, atol=1e-6)
    yi = run("RotaryEmbedding", x, np.cos(angles), np.sin(angles), pos, attrs={"interleaved": 1}, opset=23)
    zi = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles[pos])[:, None]
    np.testing.assert_allclose(yi[..., 0::2], zi.real, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(yi[..., 1::2], zi.imag, rtol=1e-5, atol=1e-6)


def test_swiglu():
    a, b = RNG.standard_normal((2, 3)).astype(F32), RNG.standard_normal((2, 3)).astype(F32)
    y = run("SwiGLU", a, b, attrs={"alpha": 1.5}, opset=28)
    assert y.dtype == F32
    np.testing.assert_allclose(y, a / (1 + np.exp(-1.5 * a)) * b, rtol=1e-6)


def test_causal_conv_state_carries_across_calls():
    x = RNG.standard_normal((2, 3, 7)).astype(F32)
    w = RNG.standard_normal((3, 1, 4)).astype(F32)
    full, state_full = run("CausalConvWithState", x, w, opset=27, num_outputs=2)
    first, state = run("CausalConvWithState", x[:, :, :5], w, opset=27, num_outputs=2)
    second, state2 = run("CausalConvWithState", x[:, :, 5:], w, None, state, opset=27, num_outputs=2)
    np.testing.assert_allclose(np.concatenate([first, second], 2), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state2, state_full)
    np.testing.assert_array_equal(state_full, x[:, :, -3:])
    ref = sum(w[None, :, 0, j, None] * np.pad(x, ((0, 0), (0, 0), (3, 0)))[:, :, j:j + 7] for j in range(4))
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-6)


def test_linear_attention_linear_rule_is_causal_kernel_attention():
    b, t, d = 1, 4, 3
    q, k, v = (RNG.standard_normal((b, t, d)).astype(F32) for _ in range(3))
    y, state = run("LinearAttention", q, k, v, attrs={"q_num_heads": 1, "kv_num_heads": 1,
                                                     "update_rule": "linear"}, opset=27, num_outputs=2)
    scores = np.tril(q[0] @ k[0].T) / np.sqrt(d)
    np.testing.assert_allclose(y[0], scores @ v[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state[0, 0], k[0].T @ v[0], rtol=1e-4, atol=1e-5)
