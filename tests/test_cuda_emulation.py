"""The host-emulation harness: generated CUDA kernels compiled for the CPU (cuda_emul.h) and checked one by one
against the reference executor, on zoo models with random weights and on small graphs of single ops.

Non-cooperative kernels (grid-stride loops) run thread after thread; cooperative ones (row kernels with warp
shuffles, tiled GEMM with shared memory) run as fibers meeting at __syncthreads, so their logic is checked
here too; their performance only a GPU shows.
"""

import os

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphc
from graphc import zoo
from graphc.backends.cuda.codegen import generate
from graphc.backends.cuda.emulate import Emulator, compiler

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the emulation harness")


def _check(model, feeds, *, cooperative=True):
    compiled = graphc.compile(model, target="reference")
    program = generate(compiled.plan)
    emulator = Emulator(compiled.plan, program)
    inputs = [feeds[n] for n in compiled.input_names]
    checks = emulator.check_kernels(inputs, include_cooperative=cooperative)
    bad = [c for c in checks if not c.ok]
    assert checks and not bad, bad
    return program, checks


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_zoo_kernels_match_the_reference(name):
    model = zoo.load(name, weights="random", seed=0)
    program, checks = _check(model, zoo.sample_inputs(model, seed=1))
    assert len(checks) == len(program.kernels)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v1", "inception_v2", "resnet50", "densenet121", "bvlc_alexnet"])
def test_more_zoo_kernels_match_the_reference(name):
    model = zoo.load(name, weights="random", seed=0)
    _check(model, zoo.sample_inputs(model, seed=1))


def test_whole_model_runs_from_the_launch_list(monkeypatch):
    """GRAPHC_CUDA_EMULATE=1 runs the cuda executable's launch list on the CPU: buffers, order, copies."""
    from graphc.backends.cuda import build as cuda_build

    if cuda_build.available() is None:
        pytest.skip("neither nvcc nor NVRTC")
    monkeypatch.setenv("GRAPHC_CUDA_EMULATE", "1")
    model = zoo.load("squeezenet", weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    got = graphc.compile(model, target="cuda").run(feeds)
    want = graphc.compile(model, target="reference").run(feeds)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "ops", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_single_op_kernels_match_the_reference():
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [64], rng.standard_normal(64).astype(np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [64], rng.standard_normal(64).astype(np.float32).tolist())
    idx = helper.make_tensor("idx", TensorProto.INT64, [3], [5, -1, 0])
    starts = helper.make_tensor("st", TensorProto.INT64, [2], [1, 60])
    ends = helper.make_tensor("en", TensorProto.INT64, [2], [3, 2])
    axes = helper.make_tensor("ax", TensorProto.INT64, [2], [0, 2])
    steps = helper.make_tensor("sp", TensorProto.INT64, [2], [1, -7])
    pads = helper.make_tensor("pads", TensorProto.INT64, [6], [0, 1, 2, 0, 3, 0])
    rax = helper.make_tensor("rax", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Softmax", ["x"], ["sm"], axis=-1),
        helper.make_node("LayerNormalization", ["x", "w", "b"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("Transpose", ["x"], ["tr"], perm=[2, 0, 1]),
        helper.make_node("Concat", ["x", "sm"], ["cat"], axis=1),
        helper.make_node("Gather", ["x", "idx"], ["ga"], axis=1),
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["sl"]),
        helper.make_node("Pad", ["x", "pads"], ["pd"], mode="constant"),
        helper.make_node("ReduceMean", ["x", "rax"], ["rm"], keepdims=0),
        helper.make_node("Erf", ["x"], ["ge"]),
        helper.make_node("MatMul", ["x2", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "x2"], ["res"]),
    ]
    m = helper.make_tensor("m", TensorProto.FLOAT, [64, 64], (rng.standard_normal((64, 64)) / 8).astype(np.float32)
                           .reshape(-1).tolist())
    outs = [_vi("sm", [3, 24, 64]), _vi("ln", [3, 24, 64]), _vi("tr", [64, 3, 24]), _vi("cat", [3, 48, 64]),
            _vi("ga", [3, 3, 64]), _vi("sl", [2, 24, 9]), _vi("pd", [3, 28, 66]), _vi("rm", [3, 64]),
            _vi("ge", [3, 24, 64]), _vi("res", [2, 80, 64])]
    model = _model(nodes, [_vi("x", [3, 24, 64]), _vi("x2", [2, 80, 64])], outs, [w, b, idx, starts, ends, axes, steps, pads, rax, m],
                   opset=18)
    program, checks = _check(model, {"x": rng.standard_normal((3, 24, 64)).astype(np.float32),
                                     "x2": rng.standard_normal((2, 80, 64)).astype(np.float32)})
    strategies = {c.strategy for c in checks}
    assert {"row", "gemm-tiled"} <= strategies


def test_a_wrong_kernel_is_caught():
    """The harness must fail a kernel that computes the wrong thing (here: a Relu turned into identity)."""
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4, 8])], [_vi("y", [4, 8])])
    compiled = graphc.compile(model, target="reference")
    program = generate(compiled.plan)
    assert program.source.count("< 0.0f ? 0.0f :") == 4  # float4 kernel: one Relu per lane
    program.source = program.source.replace("< 0.0f ? 0.0f :", "< 0.0f ? 1.0f :")
    emulator = Emulator(compiled.plan, program)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    checks = emulator.check_kernels([x])
    assert len(checks) == 1 and not checks[0].ok


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "transformer", "mobilenet"])
def test_torch_benchmark_model_kernels_match_the_reference(name):
    pytest.importorskip("torch")
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import torch_models

    module, example = torch_models.MODELS[name]()
    compiled = graphc.compile(module, target="reference", example_inputs=example)
    program = generate(compiled.plan)
    checks = Emulator(compiled.plan, program).check_kernels([x.numpy() for x in example])
    bad = [c for c in checks if not c.ok]
    assert checks and not bad, bad
