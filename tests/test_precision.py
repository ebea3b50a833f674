"""precision="mixed": the precision pass, bf16 GEMM/conv on the llvm backend, the reference oracle, the report."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ml_dtypes import bfloat16
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.backends.reference.executor import ReferenceExecutable
from graphc.errors import OptionError

RNG = np.random.default_rng(0)


def _w(shape, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(np.prod(shape[1:]) or 1)
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def mixed_model() -> onnx.ModelProto:
    """Every bf16 operand path of the GEMM driver, each with a fused epilogue:

    - Conv 7x7 stride 2 from 3 channels (im2col, odd K = 147), Conv 3x3 (im2col), Conv 1x1 (B read in place);
    - depthwise Conv (stays float32), Gemm transB with a constant B and a C bias (constant B panels);
    - MatMul of two runtime operands (A packed at run time with rows past M, B read in place), MatMul with a
      transposed runtime B (packed B), a tiny-K MatMul (stays float32).
    """
    inits = {
        "w1": _w((16, 3, 7, 7)), "b1": _w((16,), 1.0), "w2": _w((24, 16, 3, 3)), "w3": _w((32, 24, 1, 1)),
        "wd": _w((32, 1, 3, 3)), "wg": _w((40, 32 * 8 * 8)), "cg": _w((40,), 1.0), "wt": _w((4, 6)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], strides=[2, 2], pads=[3, 3, 3, 3], name="conv7x7"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv3x3"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv1x1"),
        helper.make_node("Conv", ["c3", "wd"], ["c4"], group=32, pads=[1, 1, 1, 1], name="depthwise"),
        helper.make_node("MaxPool", ["c4"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "cg"], ["g"], transB=1, name="fc"),
        helper.make_node("Tanh", ["g"], ["gt"]),
        # (1, 40) -> (10, 4) rows; A = runtime (10 x 4 rows, M % 8 != 0) times B = runtime transposed
        helper.make_node("Reshape", ["gt", "shape10x4"], ["q"]),
        helper.make_node("Transpose", ["q"], ["qt"], perm=[1, 0]),
        helper.make_node("MatMul", ["qt", "q"], ["qq"], name="runtime_ab"),  # (4,10) @ (10,4): K=10 < 16
        helper.make_node("Reshape", ["c3", "shape_seq"], ["seq"]),  # (32, 256)
        helper.make_node("Transpose", ["seq"], ["seq_t"], perm=[1, 0]),  # (256, 32)
        helper.make_node("MatMul", ["seq_t", "seq"], ["gram"], name="gram"),  # (256,32)@(32,256): K = 32
        helper.make_node("MatMul", ["seq", "seq_t"], ["gram_t"], name="gram_t"),  # (32,256)@(256,32): K = 256
        helper.make_node("MatMul", ["qq", "wt"], ["qw"], name="tiny_k"),  # K = 4
    ]
    inits["shape10x4"] = np.array([10, 4], np.int64)
    inits["shape_seq"] = np.array([32, 256], np.int64)
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("g", "gram", "gram_t", "qw")],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    for out, shape in zip(graph.output, ([1, 40], [256, 256], [32, 32], [4, 6])):
        out.type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension(dim_value=d) for d in shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def model():
    return mixed_model()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).random((1, 3, 32, 32), np.float32)


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def test_pass_marks_dot_products_and_says_why_others_stay_fp32(model):
    cm = graphc.compile(model, target="reference", precision="mixed", verify=True)
    summary = cm.report()["precision"]
    assert summary["mode"] == "mixed" and summary["compute_dtype"] == "bfloat16"
    assert sorted(summary["bf16_nodes"]) == ["conv1x1", "conv3x3", "conv7x7", "fc", "gram", "gram_t"]
    kept = summary["fp32_dot_nodes"]
    assert set(kept) == {"depthwise", "runtime_ab", "tiny_k"}
    assert "depthwise" in kept["depthwise"] and "< 16" in kept["tiny_k"]
    assert 0.5 < summary["bf16_flops_fraction"] < 1.0
    marks = {n.name: n.meta.get("precision") for n in cm.plan.graph.walk() if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert marks["conv7x7"] == "bf16" and marks["depthwise"] is None


def test_fp32_pipeline_has_no_precision_pass(model):
    cm = graphc.compile(model, target="reference")
    assert cm.report()["precision"] == {"mode": "fp32"}
    assert not any(n.meta.get("precision") for n in cm.plan.graph.walk())


def test_reference_rounds_operands_to_bf16(model, x):
    """The oracle: marked nodes multiply exactly the bf16-rounded operands (checked for the first conv)."""
    one = helper.make_model(helper.make_graph(
        [model.graph.node[0]], "one", [model.graph.input[0]],
        [helper.make_tensor_value_info("c1", TensorProto.FLOAT, [1, 16, 16, 16])],
        [i for i in model.graph.initializer if i.name in ("w1", "b1")]), opset_imports=model.opset_import)
    cm = graphc.compile(one, target="reference", precision="mixed", precision_check=False)
    got = cm(x)
    got = got if isinstance(got, np.ndarray) else list(got.values())[0]
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    rounded = graphc.compile(helper.make_model(helper.make_graph(
        [model.graph.node[0]], "one", [model.graph.input[0]], list(one.graph.output),
        [numpy_helper.from_array(w["w1"].astype(bfloat16).astype(np.float32), "w1"),
         numpy_helper.from_array(w["b1"], "b1")]), opset_imports=model.opset_import), target="reference")
    want = rounded(x.astype(bfloat16).astype(np.float32))
    want = want if isinstance(want, np.ndarray) else list(want.values())[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("threads", [1, 2])
def test_llvm_mixed_matches_the_reference_oracle(model, x, threads):
    cm = graphc.compile(model, precision="mixed", threads=threads)
    assert cm.report()["fallback_ops"] == []
    got = cm.run({"x": x})
    mixed = ReferenceExecutable(cm.plan).run([x])
    fp32 = ReferenceExecutable(cm.plan, emulate_precision=False).run([x])
    for name, want, base in zip(cm.output_names, mixed, fp32):
        # same rounded operands, float32 accumulation in another order
        assert _rel(got[name], want) < 2e-5, name
        # and bf16 is not float32: the marked outputs do differ, within bf16's error
        assert 1e-5 < _rel(got[name], base) < 1e-2 or name == "qw", name


def test_llvm_mixed_without_bf16_instructions(model, x, monkeypatch):
    """CPUs without AVX512-BF16 widen the pairs and use fp32 FMAs: same rounded operands, same results."""
    from graphc.backends.llvm.kernels import microkernel

    monkeypatch.setattr(microkernel, "has_bf16_dot", lambda: False)
    cm = graphc.compile(model, precision="mixed", threads=1, precision_check=False)
    got = cm.run({"x": x})
    for name, want in zip(cm.output_names, ReferenceExecutable(cm.plan).run([x])):
        assert _rel(got[name], want) < 2e-5, name


def test_report_measures_error_against_fp32(model):
    cm = graphc.compile(model, precision="mixed", threads=1)
    error = cm.report()["precision"]["error"]
    assert set(error["outputs"]) == {"g", "gram", "gram_t", "qw"}
    assert 1e-5 < error["max_rel"] < 1e-2
    assert error["outputs"]["g"]["top1_agrees"] is True
    skipped = graphc.compile(model, precision="mixed", threads=1, precision_check=False)
    assert "error" not in skipped.report()["precision"]


def test_mixed_artifact_round_trip(model, x, tmp_path):
    cm = graphc.compile(model, precision="mixed", threads=1, precision_check=False)
    path = cm.save(tmp_path / "mixed.gcx")
    loaded = graphc.load(path)
    assert loaded.report()["precision"]["bf16_nodes"] == cm.report()["precision"]["bf16_nodes"]
    want, got = cm.run({"x": x}), loaded.run({"x": x})
    for name in cm.output_names:
        np.testing.assert_array_equal(got[name], want[name])


def test_precision_option_errors(model):
    with pytest.raises(OptionError, match="int8"):
        graphc.compile(model, precision="int8")
    with pytest.raises(OptionError, match="cuda"):
        graphc.compile(model, target="cuda", precision="mixed")
    with pytest.raises(OptionError, match="unknown precision"):
        graphc.compile(model, precision="fp8")


def _logits_model(name: str) -> onnx.ModelProto:
    """A zoo model with random weights, its trailing Softmax removed (errors are measured on logits, which a
    saturated softmax would hide)."""
    import graphc.zoo

    return graphc.zoo.without_softmax(graphc.zoo.load(name, weights="random", seed=0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "inception_v1", "shufflenet", "densenet121",
                                  "inception_v2", "bvlc_alexnet", "zfnet512", "vgg19"])
def test_zoo_mixed_keeps_top1_and_error_below_1e_2(name):
    import graphc.zoo  # noqa: F401

    cm = graphc.compile(_logits_model(name), precision="mixed", precision_check=False)
    x = np.random.default_rng(3).random((1, 3, 224, 224), np.float32)
    y = cm(x)
    y = y if isinstance(y, np.ndarray) else list(y.values())[0]
    base = ReferenceExecutable(cm.plan, emulate_precision=False).run([x])[0]
    assert _rel(y, base) <= 1e-2
    assert int(y.argmax()) == int(base.argmax())


def test_cli_precision_flag(model, tmp_path, capsys):
    from graphc.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path), "--precision", "mixed"]) == 0
    out = capsys.readouterr().out
    assert "Precision" in out and "fp32: depthwise" in out and "error vs fp32: g" in out
    artifact = tmp_path / "m.gcx"
    assert main(["compile", str(path), "-o", str(artifact), "--precision", "mixed"]) == 0
    capsys.readouterr()
    assert main(["run", str(artifact), "--precision", "mixed"]) != 0
    assert "precision was chosen when it was compiled" in capsys.readouterr().err
    assert main(["run", str(artifact)]) == 0
