"""The public Python API of DESIGN.md's contract: compile, run, __call__, report, save/load, errors."""

import numpy as np
import onnx
import pytest

import graphc
from graphc.errors import InputError, ModelLoadError, OptionError
from tests.helpers import mlp_model, mlp_reference


@pytest.fixture(scope="module")
def mlp():
    return mlp_model()


def test_compile_accepts_proto_path_and_bytes(mlp, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp, path)
    for source in (mlp, str(path), path, mlp.SerializeToString()):
        model = graphc.compile(source, target="reference")
        np.testing.assert_allclose(model.run({"x": x})["probs"], mlp_reference(mlp, x), rtol=1e-5)


def test_call_and_names(mlp):
    model = graphc.compile(mlp, target="reference")
    assert model.input_names == ["x"] and model.output_names == ["probs"]
    x = np.ones((3, 4), np.float32)
    out = model(x)
    assert isinstance(out, np.ndarray) and out.shape == (3, 3)
    with pytest.raises(InputError, match="takes 1 input"):
        model(x, x)


@pytest.mark.parametrize("feeds, message", [
    ({}, "missing input"),
    ({"x": np.ones((2, 4), np.float32), "y": np.ones(1)}, "unknown input"),
    ({"x": np.ones((2, 4), np.float64)}, "float64"),
    ({"x": np.ones((2, 4, 1), np.float32)}, "rank"),
    ({"x": np.ones((2, 5), np.float32)}, "dimension 1 must be 4"),
    ({"x": "not an array"}, "x"),
])
def test_bad_inputs_name_input_expected_and_given(mlp, feeds, message):
    model = graphc.compile(mlp, target="reference")
    with pytest.raises(InputError, match=message) as info:
        model.run(feeds)
    if "x" in feeds and feeds["x"] is not None and not isinstance(feeds["x"], str):
        assert "float32[N,4]" in str(info.value)


def test_report_has_contract_keys(mlp):
    compiled = graphc.compile(mlp, target="reference")
    report = compiled.report()
    assert report["nodes"] == 5 and report["kernels"] >= 1 and report["fallback_ops"] == []
    # symbolic batch dims count as 1: 2*1*4*5 + 2*1*5*3, and the graph keeps its symbolic types
    assert report["flops_by_op"]["MatMul"] == 70
    assert str(compiled.graph.inputs[0].type) == "float32[N,4]"
    memory = report["memory"]
    assert memory["weights_bytes"] == (4 * 5 + 5 + 5 * 3) * 4
    assert memory["lower_bound_bytes"] <= memory["naive_bytes"]
    assert set(memory) >= {"arena_bytes", "lower_bound_bytes", "weights_bytes"}


def test_option_errors():
    with pytest.raises(OptionError, match="unknown target"):
        graphc.compile(mlp_model(), target="tpu")
    with pytest.raises(OptionError, match="precision"):
        graphc.compile(mlp_model(), precision="fp8")
    with pytest.raises(OptionError, match="unknown compile option"):
        graphc.compile(mlp_model(), target="reference", fast=True)
    with pytest.raises(OptionError, match="device"):
        graphc.compile(mlp_model(), target="reference", devices="gpu:0")


def test_model_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        graphc.compile(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(graphc.GraphcError):
        graphc.compile(bad)
    with pytest.raises(ModelLoadError, match="unknown zoo model"):
        graphc.compile("zoo:nosuchnet")
    with pytest.raises(ModelLoadError):
        graphc.compile(42)


def test_pass_plugins_through_compile_options(mlp):
    def ran(model):
        return [record["name"] for record in model.report()["pipeline"]["passes"]]

    assert "dce" not in ran(graphc.compile(mlp, target="reference", passes=["-dce"]))
    assert "dce" in ran(graphc.compile(mlp, target="reference"))


def test_pass_options_reach_the_passes(mlp):
    wrapped = graphc.compile(mlp, target="reference")
    annotated = graphc.compile(mlp, target="reference", fusion_mode="annotate")
    assert any(n.op_type == "FusedKernel" for n in wrapped.graph.nodes)
    assert not any(n.op_type == "FusedKernel" for n in annotated.graph.nodes)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(wrapped(x), annotated(x))
    with pytest.raises(graphc.GraphcError, match="fusion_mode"):
        graphc.compile(mlp, target="reference", fusion_mode="sideways")


def test_report_counts_fused_flops_once():
    model = graphc.compile("zoo:resnet50", target="reference")
    report = model.report()
    assert report["kernels"] * 3 <= report["nodes"]  # fusion: at least 3x fewer kernels than imported nodes
    assert report["fusion"]["kernels_after"] == report["kernels"]
    assert report["bytes_moved"]["after"] < report["bytes_moved"]["before"]
    unfused = graphc.compile("zoo:resnet50", target="reference", passes=["-fusion"]).report()
    assert report["flops"] == unfused["flops"] and report["ops"] == unfused["ops"]
