"""graphc.profile: per-kernel times of the llvm target from cycle stamps after every step."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import OptionError
from graphc.profile import profile


def _model():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "wt")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["s"], axis=-1, name="softmax"),
        helper.make_node("Reshape", ["s", "shape"], ["img"]),
        # ConvTranspose has no llvm code generator: it runs the reference kernel (a fallback step)
        helper.make_node("ConvTranspose", ["img", "wt"], ["y"], name="deconv"),
    ]
    shape = numpy_helper.from_array(np.array([16, 4, 4, 4], np.int64), "shape")
    graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 4, 6, 6])], [w, wt, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def compiled():
    return graphc.compile(_model(), threads=2)


def test_profile_times_every_step(compiled):
    report = profile(compiled, repeat=5)
    steps = compiled.executable.specializations
    (spec,) = steps.values()
    assert len(report.kernels) == len(spec.program.steps) >= 3
    assert all(k.seconds >= 0 for k in report.kernels) and report.run_seconds > 0
    assert sum(k.seconds for k in report.kernels) == pytest.approx(report.run_seconds, rel=0.5)
    assert report.cycles_per_second > 1e6
    codes = {k.code for k in report.kernels}
    assert "fallback" in codes and "gemm+epilogue" in codes
    gemm = next(k for k in report.kernels if k.code == "gemm+epilogue")
    assert gemm.flops == 2 * 16 * 64 * 64 + 16 * 64 and gemm.ops == "MatMul+Relu"  # the Relu: one per element
    text = report.format(top=3)
    assert "Kernel times" in text and "By op types" in text and len(text.splitlines()) == 2 + 3 + 1
    assert set(report.to_dict()) >= {"kernels", "by_op", "run_seconds"}


def test_profile_uses_given_feeds_and_checks_them(compiled):
    x = np.ones((16, 64), np.float32)
    assert profile(compiled, feeds={"x": x}, repeat=2).repeat == 2
    with pytest.raises(graphc.InputError):
        profile(compiled, feeds={"x": np.ones((3, 64), np.float32)}, repeat=2)


def test_profile_needs_the_llvm_target():
    with pytest.raises(OptionError, match="llvm target"):
        profile(graphc.compile(_model(), target="reference"))
    with pytest.raises(OptionError, match="repeat"):
        profile(graphc.compile(_model(), threads=1), repeat=0)


def test_cli_bench_profile(tmp_path, capsys):
    import onnx

    from graphc.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    assert main(["bench", str(path), "--repeat", "3", "--warmup", "1", "--profile"]) == 0
    out = capsys.readouterr().out
    assert "Kernel times" in out and "deconv" in out
