"""RNN/GRU/LSTM: shape rules with symbolic dims, cost, and behaviours the ONNX suite leaves out
(sequence_lens, layout=1 against layout=0, activation attributes, dtype preservation)."""

from functools import partial

import numpy as np
import pytest

from graphc.ir import TensorType

from tests.ops import util


node_ctx = partial(util.node_ctx, opset=14)
run = partial(util.run, opset=14, num_outputs=2)


def weights(op_type, gates, hidden=3, inp=4, dirs=1, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((dirs, gates * hidden, inp)).astype(np.float32)
    R = rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32)
    B = rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32)
    return W, R, B


GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def test_infer_symbolic_batch_and_layouts():
    x = TensorType(np.float32, ("T", "N", 4))
    ctx = node_ctx("LSTM", [x, TensorType(np.float32, (2, 12, 4)), TensorType(np.float32, (2, 12, 3))],
                   {"hidden_size": 3, "direction": "bidirectional"}, num_outputs=3)
    y, yh, yc = ctx.opdef.infer(ctx)
    assert y == TensorType(np.float32, ("T", 2, "N", 3))
    assert yh == yc == TensorType(np.float32, (2, "N", 3))
    # batch-major layout; hidden size read from R when the attribute is absent
    xb = TensorType(np.float16, ("N", "T", 4))
    ctx = node_ctx("GRU", [xb, TensorType(np.float16, (1, 9, 4)), TensorType(np.float16, (1, 9, 3))], {"layout": 1},
                   num_outputs=2)
    y, yh = ctx.opdef.infer(ctx)
    assert y == TensorType(np.float16, ("N", "T", 1, 3))
    assert yh == TensorType(np.float16, ("N", 1, 3))


def test_cost_counts_both_matmuls_per_gate():
    ctx = node_ctx("GRU", [TensorType(np.float32, (5, 2, 4)), TensorType(np.float32, (2, 9, 4)),
                           TensorType(np.float32, (2, 9, 3))], {"hidden_size": 3, "direction": "bidirectional"},
                   num_outputs=2)
    assert ctx.opdef.cost(ctx).flops == 2 * 5 * 2 * 3 * 3 * (4 + 3) * 2


@pytest.mark.parametrize("op_type", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens_equals_running_the_prefix_alone(op_type, direction):
    dirs = 2 if direction == "bidirectional" else 1
    W, R, B = weights(op_type, GATES[op_type], dirs=dirs)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 2, 4)).astype(np.float32)
    attrs = {"hidden_size": 3, "direction": direction}
    lens = np.array([5, 3], np.int32)
    n_out = 3 if op_type == "LSTM" else 2
    Y, Y_h = run(op_type, X, W, R, B, lens, attrs=attrs, num_outputs=n_out)[:2]
    Y1, Y1_h = run(op_type, X[:3, 1:], W, R, B, attrs=attrs, num_outputs=n_out)[:2]
    np.testing.assert_allclose(Y[:3, :, 1:], Y1, rtol=1e-5, atol=1e-6)
    assert not Y[3:, :, 1].any()  # padding steps emit zeros
    np.testing.assert_allclose(Y_h[:, 1:], Y1_h, rtol=1e-5, atol=1e-6)


def test_layout_1_is_layout_0_transposed():
    W, R, B = weights("LSTM", 4)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 2, 4)).astype(np.float32)
    h0 = rng.standard_normal((1, 2, 3)).astype(np.float32)
    c0 = rng.standard_normal((1, 2, 3)).astype(np.float32)
    Y, Y_h, Y_c = run("LSTM", X, W, R, B, None, h0, c0, attrs={"hidden_size": 3}, num_outputs=3)
    Yb, Yb_h, Yb_c = run("LSTM", X.transpose(1, 0, 2), W, R, B, None, h0.transpose(1, 0, 2), c0.transpose(1, 0, 2),
                         attrs={"hidden_size": 3, "layout": 1}, num_outputs=3)
    np.testing.assert_allclose(Yb, Y.transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(Yb_h, Y_h.transpose(1, 0, 2), rtol=1e-6)
    np.testing.assert_allclose(Yb_c, Y_c.transpose(1, 0, 2), rtol=1e-6)


def test_activation_attributes_and_clip():
    W, R, B = weights("RNN", 1)
    X = np.random.default_rng(3).standard_normal((4, 2, 4)).astype(np.float32)
    Y, _ = run("RNN", X, W, R, B, attrs={"hidden_size": 3, "activations": ["Affine"], "activation_alpha": [2.0],
                                    "activation_beta": [0.5], "clip": 1.0})
    h = np.zeros((2, 3), np.float32)
    for t in range(4):
        pre = np.clip(X[t] @ W[0].T + h @ R[0].T + B[0, :3] + B[0, 3:], -1, 1)
        h = 2.0 * pre + 0.5
        np.testing.assert_allclose(Y[t, 0], h, rtol=1e-5)


def test_lstm_input_forget_couples_gates():
    W, R, B = weights("LSTM", 4, hidden=2, inp=2)
    X = np.random.default_rng(4).standard_normal((1, 1, 2)).astype(np.float32)
    Y, _, Y_c = run("LSTM", X, W, R, B, attrs={"hidden_size": 2, "input_forget": 1}, num_outputs=3)
    pre = X[0] @ W[0].T + B[0, :8] + B[0, 8:]
    sig = lambda v: 1 / (1 + np.exp(-v))
    f = sig(pre[:, 4:6])
    c = (1 - f) * np.tanh(pre[:, 6:8])  # c0 = 0, input gate = 1 - forget gate
    np.testing.assert_allclose(Y_c[0], c, rtol=1e-5)


def test_float16_stays_float16():
    W, R, B = (a.astype(np.float16) for a in weights("GRU", 3))
    X = np.ones((2, 1, 4), np.float16)
    Y, Y_h = run("GRU", X, W, R, B, attrs={"hidden_size": 3, "linear_before_reset": 1})
    assert Y.dtype == Y_h.dtype == np.float16
