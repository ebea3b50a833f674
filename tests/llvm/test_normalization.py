"""llvm code generators of the normalization ops (backends/llvm/kernels/normalization.py) and of fused row-wise
bodies (decomposed LayerNorm/Softmax with producers and consumers, backends/llvm/kernels/rowfusion.py), checked
against the reference target; each test also checks which emitter ran and that nothing fell back."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc

pytest.importorskip("llvmlite")

_TP = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(n, _TP[np.dtype(d)], s) for n, s, d in inputs],
                              [helper.make_tensor_value_info(n, _TP[np.dtype(d)], s) for n, s, d in outputs],
                              [numpy_helper.from_array(a, name) for name, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds, emitter, rtol=1e-5, atol=1e-5, **options):
    llvm = graphc.compile(model, target="llvm", **options)
    got = llvm.run(feeds)
    want = graphc.compile(model, target="reference").run(feeds)
    for name in want:
        assert got[name].shape == want[name].shape and got[name].dtype == want[name].dtype
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    spec = llvm.executable.describe()["specializations"][0]
    assert spec["emitters"].get(emitter, 0) >= 1 and spec["fallback_ops"] == [], spec
    return llvm, got


def _rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_axes_bias_and_statistics_outputs(dtype):
    x = _rand(3, 5, 40, dtype=dtype) * 3 + 1
    for axis in (-1, 1):
        norm = x.shape[axis:] if axis > 0 else x.shape[-1:]
        stat = list(x.shape[:axis % 3]) + [1] * len(norm)
        s, b = _rand(*norm, dtype=dtype, seed=1), _rand(*norm, dtype=dtype, seed=2)
        node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=axis, epsilon=1e-3)
        model = _model([node], [("x", x.shape, dtype)],
                       [("y", x.shape, dtype), ("mean", stat, dtype), ("inv", stat, dtype)], [("s", s), ("b", b)])
        _check(model, {"x": x}, "LayerNormalization")
    # no bias, scale broadcast from a size-1 tensor
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"])
    model = _model([node], [("x", x.shape, dtype)], [("y", x.shape, dtype)], [("s", np.full(1, 1.5, dtype))])
    _check(model, {"x": x}, "LayerNormalization")


def test_rms_norm():
    x = _rand(4, 3, 50) * 2
    for axis in (-1, 1):
        norm = x.shape[axis % 3:]
        node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=axis, epsilon=1e-4)
        model = _model([node], [("x", x.shape, np.float32)], [("y", x.shape, np.float32)],
                       [("s", _rand(*norm, seed=1))], opset=23)
        _check(model, {"x": x}, "RMSNormalization")


def test_batch_norm_inference_when_not_folded():
    # scale etc. are graph inputs, so BatchNorm folding cannot remove the node
    x = _rand(2, 3, 5, 7)
    feeds = {"x": x, "s": _rand(3, seed=1), "b": _rand(3, seed=2), "m": _rand(3, seed=3),
             "v": np.abs(_rand(3, seed=4)) + 0.5}
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-4)
    model = _model([node], [("x", x.shape, np.float32)] + [(n, [3], np.float32) for n in "sbmv"],
                   [("y", x.shape, np.float32)])
    _check(model, feeds, "BatchNormalization")


def test_instance_and_group_norm():
    x = _rand(2, 6, 4, 5) * 2 + 0.5
    scale, bias = _rand(6, seed=1), _rand(6, seed=2)
    node = helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)
    model = _model([node], [("x", x.shape, np.float32)], [("y", x.shape, np.float32)], [("s", scale), ("b", bias)])
    _check(model, {"x": x}, "InstanceNormalization")
    for opset, params in ((21, 6),):  # opset 18 (per-group parameters) is refused by the ONNX checker
        node = helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=3, epsilon=1e-5)
        model = _model([node], [("x", x.shape, np.float32)], [("y", x.shape, np.float32)],
                       [("s", _rand(params, seed=3)), ("b", _rand(params, seed=4))], opset=opset)
        _check(model, {"x": x}, "GroupNormalization")


def test_lp_norm_and_mean_variance_norm():
    x = _rand(3, 4, 6)
    x[1, :, 2] = 0  # a zero norm along axis 1
    for p in (1, 2):
        for axis in (1, -1):
            node = helper.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)
            model = _model([node], [("x", x.shape, np.float32)], [("y", x.shape, np.float32)])
            _check(model, {"x": x}, "LpNormalization")
    x4 = _rand(2, 3, 4, 5) + 1
    for axes in ([0, 2, 3], [1], [2, 3]):
        node = helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=axes)
        model = _model([node], [("x", x4.shape, np.float32)], [("y", x4.shape, np.float32)], opset=13)
        _check(model, {"x": x4}, "MeanVarianceNormalization", rtol=1e-4, atol=1e-4)


# -- fused row-wise bodies (rowfusion.py) ------------------------------------------------------------------------
def _c(name, value):
    return name, np.asarray(value, np.float32)


def test_decomposed_layer_norm_with_residual_and_gelu_is_one_rowwise_kernel():
    d = 96
    nodes = [helper.make_node("Add", ["x", "r"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mu"], axes=[-1]),
             helper.make_node("Sub", ["h", "mu"], ["dev"]),
             helper.make_node("Pow", ["dev", "two"], ["dev2"]),
             helper.make_node("ReduceMean", ["dev2"], ["var"], axes=[-1]),
             helper.make_node("Add", ["var", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Div", ["dev", "sd"], ["nrm"]),
             helper.make_node("Mul", ["nrm", "g"], ["ng"]),
             helper.make_node("Add", ["ng", "bb"], ["ln"]),
             helper.make_node("Div", ["ln", "sqrt2"], ["t"]),
             helper.make_node("Erf", ["t"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]),
             helper.make_node("Mul", ["ln", "e1"], ["y"])]
    inits = [_c("two", 2), _c("eps", 1e-5), ("g", _rand(d, seed=1)), ("bb", _rand(d, seed=2)),
             _c("sqrt2", np.sqrt(2)), _c("one", 1)]
    model = _model(nodes, [("x", ["N", 7, d], np.float32), ("r", ["N", 7, d], np.float32)],
                   [("y", ["N", 7, d], np.float32)], inits, opset=13)
    feeds = {"x": _rand(3, 7, d, seed=3) * 2, "r": _rand(3, 7, d, seed=4)}
    llvm, got = _check(model, feeds, "rowwise")
    spec = llvm.executable.describe()["specializations"][0]
    assert spec["kernels"] == 1, spec
    two = graphc.compile(model, target="llvm", threads=1).run(feeds)
    for name in got:  # fixed-order reductions: the thread count does not change a bit
        np.testing.assert_array_equal(got[name], two[name])


def test_scaled_masked_softmax_and_column_log_softmax_bodies():
    s = 33
    # mask: a trailing (s, s) block (flat offset modulo s*s); heads: one factor per head, (4, 1, 1) (the
    # general index, from the digits of the flat offset)
    nodes = [helper.make_node("Mul", ["x", "scale"], ["a"]), helper.make_node("Add", ["a", "mask"], ["b"]),
             helper.make_node("Mul", ["b", "heads"], ["c"]), helper.make_node("Softmax", ["c"], ["y"], axis=-1)]
    mask = np.triu(np.full((s, s), -1e9, np.float32), 1)
    model = _model(nodes, [("x", [2, 4, s, s], np.float32), ("heads", [4, 1, 1], np.float32)],
                   [("y", [2, 4, s, s], np.float32)], [_c("scale", 0.125), ("mask", mask)])
    heads = np.array([0.5, 1, 2, 4], np.float32).reshape(4, 1, 1)
    _check(model, {"x": _rand(2, 4, s, s), "heads": heads}, "rowwise")
    nodes = [helper.make_node("Exp", ["x"], ["a"]), helper.make_node("LogSoftmax", ["a"], ["b"], axis=1),
             helper.make_node("Neg", ["b"], ["y"])]
    model = _model(nodes, [("x", [3, 50, 20], np.float32)], [("y", [3, 50, 20], np.float32)])
    _check(model, {"x": _rand(3, 50, 20)}, "rowwise", rtol=1e-5, atol=1e-5)


def test_a_body_the_row_emitter_declines_is_split_and_still_correct():
    # a per-row sum broadcast against a per-column vector: not a row-wise body; its nodes run one by one
    nodes = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("ReduceSum", ["e"], ["s"], axes=[1]),
             helper.make_node("Add", ["s", "v"], ["y"])]
    model = _model(nodes, [("x", [4, 8], np.float32)], [("y", [4, 8], np.float32)], [("v", _rand(8, seed=5))],
                   opset=11)
    llvm, _ = _check(model, {"x": _rand(4, 8)}, "ReduceSum")
    assert "rowwise" not in llvm.executable.describe()["specializations"][0]["emitters"]


@pytest.mark.parametrize("size, shape", [(5, (1, 16, 7, 9)), (3, (2, 4, 5)), (2, (1, 3, 4, 4))])
def test_lrn_matches_the_reference(size, shape):
    from onnx import TensorProto, helper

    import graphc

    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=2e-3, beta=0.75, bias=1.5)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(size).standard_normal(shape).astype(np.float32) * 4
    llvm = graphc.compile(model, target="llvm", threads=2)
    assert llvm.report()["backend"]["specializations"][0]["emitters"] == {"LRN": 1}
    np.testing.assert_allclose(llvm(x), graphc.compile(model, target="reference")(x), rtol=2e-6, atol=1e-7)
