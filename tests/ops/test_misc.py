"""NonMaxSuppression, random ops, optimizers, losses and signal ops: cases the ONNX suite leaves out."""

from functools import partial

import numpy as np

from graphc.ir import TensorType

from tests.ops import util


node_ctx = partial(util.node_ctx, opset=17)
run = partial(util.run, opset=17)


def test_nms_center_boxes_flipped_corners_and_iou_equal_to_threshold():
    # two unit boxes overlapping by half: IoU = 1/3
    corners = np.array([[[0, 0, 1, 1], [1, 1.5, 0, 0.5], [5, 5, 6, 6]]], np.float32)  # box 1 given flipped
    scores = np.array([[[0.9, 0.8, 0.1]]], np.float32)
    limit = np.array(10, np.int64)
    picked = run("NonMaxSuppression", corners, scores, limit, np.array(0.3, np.float32))
    np.testing.assert_array_equal(picked, [[0, 0, 0], [0, 0, 2]])
    picked = run("NonMaxSuppression", corners, scores, limit, np.array(1 / 3, np.float32))
    assert picked.shape == (3, 3) and picked.dtype == np.int64  # equal IoU is kept
    centers = np.array([[[0.5, 0.5, 1, 1], [1.0, 0.5, 1, 1], [5.5, 5.5, 1, 1]]], np.float32)
    picked = run("NonMaxSuppression", centers, scores, limit, np.array(0.3, np.float32), np.array(0.5, np.float32),
                 attrs={"center_point_box": 1})
    np.testing.assert_array_equal(picked, [[0, 0, 0]])  # box 1 suppressed, box 2 under the score threshold
    assert run("NonMaxSuppression", corners, scores).shape == (0, 3)


def test_random_ops_shapes_dtypes_and_seeds():
    a = run("RandomNormal", attrs={"shape": [2, 3], "seed": 3.0, "dtype": 11})
    b = run("RandomNormal", attrs={"shape": [2, 3], "seed": 3.0, "dtype": 11})
    assert a.shape == (2, 3) and a.dtype == np.float64
    np.testing.assert_array_equal(a, b)
    like = run("RandomUniformLike", np.zeros((4,), np.float16), attrs={"low": 2.0, "high": 3.0})
    assert like.dtype == np.float16 and ((like >= 2) & (like <= 3)).all()
    coin = run("Bernoulli", np.array([0.0, 1.0, 0.0], np.float32))
    np.testing.assert_array_equal(coin, [0, 1, 0])
    ctx = node_ctx("RandomUniformLike", [TensorType(np.float32, ("N", 3))], {"dtype": 10})
    assert ctx.opdef.infer(ctx) == [TensorType(np.float16, ("N", 3))]


def test_momentum_nesterov_and_first_step_beta():
    x, g, v = (np.array([1.0, 2.0], np.float32), np.array([0.5, -1.0], np.float32), np.array([0.1, 0.2], np.float32))
    attrs = {"alpha": 0.9, "beta": 0.5, "mode": "nesterov", "norm_coefficient": 0.1}
    domain = "ai.onnx.preview.training"
    for step, beta in ((0, 1.0), (3, 0.5)):
        x_new, v_new = run("Momentum", np.array(0.01, np.float32), np.array(step, np.int64), x, g, v, attrs=attrs,
                           domain=domain, num_outputs=2)
        g_reg = 0.1 * x + g
        v_ref = 0.9 * v + beta * g_reg
        np.testing.assert_allclose(v_new, v_ref, rtol=1e-6)
        np.testing.assert_allclose(x_new, x - 0.01 * (g_reg + 0.9 * v_ref), rtol=1e-6)
        assert x_new.dtype == np.float32


def test_adam_updates_several_tensors_in_groups():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    gs, vs, hs = ([rng.standard_normal(x.shape).astype(np.float32) for x in xs] for _ in range(3))
    hs = [np.abs(h) for h in hs]
    outs = run("Adam", *([np.array(0.1, np.float32), np.array(0, np.int64)] + xs + gs + vs + hs),
               domain="ai.onnx.preview.training", num_outputs=6)
    assert [o.shape for o in outs] == [(3,), (2,)] * 3
    v1 = 0.9 * vs[1] + 0.1 * gs[1]
    h1 = 0.999 * hs[1] + 0.001 * gs[1] ** 2
    np.testing.assert_allclose(outs[1], xs[1] - 0.1 * v1 / (np.sqrt(h1) + 1e-6), rtol=1e-5)


def test_nll_mean_divides_by_counted_weight():
    log_prob = np.log(np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], np.float32))
    target = np.array([1, -1, 0])  # the middle target is ignored and out of range
    weight = np.array([2.0, 1.0], np.float32)
    loss = run("NegativeLogLikelihoodLoss", log_prob, target, weight, attrs={"ignore_index": -1})
    expected = -(np.log(0.8) * 1.0 + np.log(0.5) * 2.0) / 3.0
    assert loss.dtype == np.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_loss_infer_with_symbolic_batch():
    ctx = node_ctx("SoftmaxCrossEntropyLoss", [TensorType(np.float32, ("N", 5, 7)), TensorType(np.int64, ("N", 7))],
                   {"reduction": "none"}, num_outputs=2)
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, ("N", 7)), TensorType(np.float32, ("N", 5, 7))]


def test_dft_axis_forms_and_dtype():
    x = np.random.default_rng(0).standard_normal((2, 8, 1)).astype(np.float32)
    old = run("DFT", x, attrs={"axis": -2}, opset=17)
    new = run("DFT", x, None, np.array(-2, np.int64), opset=20)
    np.testing.assert_allclose(old, new)
    ref = np.fft.fft(x[..., 0].astype(np.float64), axis=1)
    np.testing.assert_allclose(new[..., 0] + 1j * new[..., 1], ref, rtol=1e-4, atol=1e-5)
    assert new.dtype == np.float32
    # dft_length zero-pads; an inverse onesided transform returns real samples
    padded = run("DFT", x, np.array(10, np.int64), np.array(1, np.int64), opset=20)
    assert padded.shape == (2, 10, 2)
    back = run("DFT", run("DFT", x, attrs={"onesided": 1}, opset=17), attrs={"onesided": 1, "inverse": 1}, opset=17)
    np.testing.assert_allclose(back, x, rtol=1e-4, atol=1e-5)


def test_window_dtype_and_infer():
    w = run("HannWindow", np.array(4, np.int64), attrs={"output_datatype": 11, "periodic": 0})
    assert w.dtype == np.float64
    np.testing.assert_allclose(w, [0, 0.75, 0.75, 0], atol=1e-12)
    ctx = node_ctx("BlackmanWindow", [TensorType(np.int64, ())])
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, (None,))]
