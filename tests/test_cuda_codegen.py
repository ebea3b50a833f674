"""CUDA backend without a GPU: code generation for every zoo model, nvcc builds for sm_80 and sm_90, the
artifact keeping source/log/binary, host steps for ops without a CUDA path, and clear errors.

Builds go through a per-session cache directory, so each model is compiled by nvcc once per test run.
"""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphc
from graphc import zoo
from graphc.backends.cuda import build as cuda_build
from graphc.backends.cuda.codegen import generate

needs_nvcc = pytest.mark.skipif(cuda_build.find_nvcc() is None, reason="nvcc is not installed")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cuda-cache"))


def _plan(model):
    return graphc.compile(model, target="reference").plan


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.MODELS)
def test_every_zoo_kernel_has_device_code(name):
    program = generate(_plan(zoo.load(name)))
    assert program.fallback_ops == [] and not program.host_nodes, program.problems
    # one kernel per scheduled node, each launched once, every argument in a known memory space
    assert len([e for e in program.launches if "kernel" in e]) == len(program.kernels) > 0
    for entry in program.launches:
        for arg in entry.get("args", []):
            assert arg["space"] in ("arena", "weights", "input", "output")
            assert arg["space"] != "arena" or 0 <= arg["offset"] < program.arena_bytes
    assert f"__global__ void {program.kernels[0].name}(" in program.source.replace("__launch_bounds__(256) ", "")


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_builds_with_nvcc_for_sm80_and_sm90(name):
    program = generate(_plan(zoo.load(name)))
    built = cuda_build.build(program.source, [80, 90])
    assert built.compiler == "nvcc" and built.archs == [80, 90]
    assert "sm_80" in built.log and "sm_90" in built.log  # ptxas -v reports every kernel per architecture
    assert built.binaries["kernels.fatbin"][:4] == bytes.fromhex("50ed55ba")  # fatbin magic


def _tiny_model_with_fallback():
    """Relu -> CumSum (no CUDA path: runs on the host) -> Softmax."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CumSum", ["r", "axis"], ["c"]),
             helper.make_node("Softmax", ["c"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [axis])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_op_without_cuda_path_becomes_a_reported_host_step(monkeypatch):
    monkeypatch.setenv("GRAPHC_CUDA_EMULATE", "1")
    if cuda_build.available() is None:
        pytest.skip("neither nvcc nor NVRTC")
    model = _tiny_model_with_fallback()
    compiled = graphc.compile(model, target="cuda")
    report = compiled.report()
    assert report["fallback_ops"] == ["CumSum"]
    assert report["backend"]["host_steps"] == 1
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    want = graphc.compile(model, target="reference").run({"x": x})["y"]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)


@needs_nvcc
def test_cli_compile_keeps_source_log_and_binary_and_run_needs_a_gpu(tmp_path, monkeypatch):
    from graphc.backends.cuda.runtime import probe
    from graphc.cli import main

    out = tmp_path / "squeezenet.gcx"
    assert main(["compile", "zoo:squeezenet", "--target", "cuda", "-o", str(out)]) == 0
    import zipfile

    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert {"backend/kernels.cu", "backend/launch.json", "backend/build.log", "backend/kernels.fatbin"} <= names
        assert b"__global__" in zf.read("backend/kernels.cu")
    # loading reuses the stored binary: no compiler needed
    monkeypatch.setattr(cuda_build, "find_nvcc", lambda: None)
    monkeypatch.setattr(cuda_build, "nvrtc_module", lambda: None)
    loaded = graphc.load(out)
    assert loaded.executable.build.binaries["kernels.fatbin"][:4] == bytes.fromhex("50ed55ba")
    if probe()[0]:
        pytest.skip("a GPU is present: running is tested in test_cuda_gpu.py")
    monkeypatch.delenv("GRAPHC_CUDA_EMULATE", raising=False)
    with pytest.raises(graphc.DeviceError, match="no CUDA GPU/driver found"):
        loaded.run(zoo.sample_inputs(zoo.load("squeezenet")))


@needs_nvcc
def test_build_errors_carry_the_compiler_message():
    with pytest.raises(graphc.DeviceError, match=r"(?s)nvcc failed.*undeclared_name"):
        cuda_build.build('extern "C" __global__ void broken() { undeclared_name = 1; }', [80])


def test_compile_without_any_cuda_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cuda_build, "find_nvcc", lambda: None)
    monkeypatch.setattr(cuda_build, "nvrtc_module", lambda: None)
    from graphc.backends import cuda

    plan = _plan(_tiny_model_with_fallback())
    with pytest.raises(graphc.DeviceError, match="nvcc .* or NVRTC"):
        cuda.compile(plan)


@pytest.mark.torch
@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "transformer", "lstm_lm", "mobilenet"])
def test_torch_benchmark_models_compile_for_cuda(name):
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import torch_models

    module, example = torch_models.MODELS[name]()
    compiled = graphc.compile(module, target="cuda", example_inputs=example)
    report = compiled.report()
    assert report["backend"]["kernels"] > 0
    assert set(report["fallback_ops"]) <= {"LSTM"}, report["backend"]["host_step_reasons"]
