"""The llvm backend's machinery: fallbacks, threads, specialisation per binding, thread safety, errors.

The code generators have tests of their own (tests/llvm/test_*.py); here every model is checked against the
reference target, and the models are chosen to go through the core's paths (dynamic shapes, split bodies,
errors raised by a fallback kernel in the middle of a run).
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphc
from graphc.errors import ExecutionError

pytest.importorskip("llvmlite")


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _both(model, feeds, **options):
    llvm = graphc.compile(model, target="llvm", **options)
    ref = graphc.compile(model, target="reference")
    got, want = llvm.run(feeds), ref.run(feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
    return llvm


def test_dynamic_shapes_go_through_fallbacks_and_match():
    # NonZero's output size depends on the data: everything after it has no static storage
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("NonZero", ["r"], ["nz"]),
             helper.make_node("Cast", ["nz"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "x"], ["y"])]
    model = _model(nodes, [_vi("x", [3, 4])], [_vi("f", [2, "K"]), _vi("y", [3, 4])])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    m = _both(model, {"x": x})
    assert "NonZero" in m.report()["fallback_ops"]
    assert m.report()["backend"]["specializations"][0]["fallbacks"] >= 1


def test_symbolic_batch_compiles_one_specialisation_per_binding():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32) / 7)
    model = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], [w])
    m = graphc.compile(model, target="llvm")
    assert m.executable.specializations == {}
    rng = np.random.default_rng(1)
    for n in (2, 5, 2):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(m(x), np.maximum(x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 7), 0),
                                   rtol=1e-5, atol=1e-6)
    assert len(m.executable.specializations) == 2


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_give_the_same_outputs(threads):
    nodes = [helper.make_node("Add", ["x", "b"], ["h"]), helper.make_node("Sigmoid", ["h"], ["s"]),
             helper.make_node("Transpose", ["s"], ["y"], perm=[1, 0])]
    b = helper.make_tensor("b", TensorProto.FLOAT, [37], np.linspace(-1, 1, 37, dtype=np.float32))
    model = _model(nodes, [_vi("x", [29, 37])], [_vi("y", [37, 29])], [b])
    x = np.random.default_rng(2).standard_normal((29, 37)).astype(np.float32)
    m = _both(model, {"x": x}, threads=threads)
    assert m.executable.threads == threads


def test_concurrent_callers_get_their_own_results():
    nodes = [helper.make_node("Mul", ["x", "x"], ["y"])]
    model = _model(nodes, [_vi("x", [64, 64])], [_vi("y", [64, 64])])
    m = graphc.compile(model, target="llvm", threads=2)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            x = rng.standard_normal((64, 64)).astype(np.float32)
            if not np.array_equal(m(x), x * x):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_failing_fallback_is_an_execution_error_and_the_model_still_runs():
    # Gather with an index out of range fails in the reference kernel in the middle of the run
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Gather", ["r", "i"], ["g"], axis=0),
             helper.make_node("Neg", ["g"], ["y"])]
    model = _model(nodes, [_vi("x", [4, 3]), _vi("i", [2], TensorProto.INT64)], [_vi("y", [2, 3])])
    m = graphc.compile(model, target="llvm", threads=2)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    with pytest.raises(ExecutionError):
        m.run({"x": x, "i": np.array([0, 9], np.int64)})
    np.testing.assert_array_equal(m.run({"x": x, "i": np.array([3, 1], np.int64)})["y"], -x[[3, 1]])


def test_outputs_that_are_inputs_or_weights_are_fresh_copies():
    c = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["c"], ["z"])]
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2]), _vi("z", [2])], [c])
    m = graphc.compile(model, target="llvm")
    x = np.array([3.0, 4.0], np.float32)
    y, z = m(x)
    y[0] = 99
    z[0] = 99
    np.testing.assert_array_equal(m(x)[1], [1.0, 2.0])
    assert x[0] == 3.0


def test_control_flow_runs_through_the_reference_with_outer_scope_reads():
    then = helper.make_graph([helper.make_node("Add", ["x", "x"], ["t"])], "then", [], [_vi("t", [2])])
    els = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [_vi("e", [2])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=els)]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    model = _model(nodes, [_vi("x", [2])], [_vi("y", [2])], [zero])
    for x in (np.array([1.0, 2.0], np.float32), np.array([-1.0, -2.0], np.float32)):
        _both(model, {"x": x})


def test_a_kernel_can_end_the_run_with_an_error_message(monkeypatch):
    from llvmlite import ir

    from graphc.backends.llvm import kernel as kernel_mod

    def emit_checked_neg(kb, node):  # y = -x, but a negative first element is "bad data"
        b = kb.builder
        x, y = kb.ptr(node.inputs[0]), kb.ptr(node.outputs[0])
        n = int(np.prod(kb.shape(node.inputs[0])))
        first = b.load(x)
        kb.fail_if(b.fcmp_ordered("<", first, ir.Constant(kernel_mod.F32, 0.0)),
                   f"Neg node {node.name!r}: a negative first element")
        lo, hi = kb.thread_range(n)
        with kb.for_range(lo, hi) as i:
            b.store(b.fneg(b.load(b.gep(x, [i]))), b.gep(y, [i]))

    monkeypatch.setitem(kernel_mod.NODE_EMITTERS, "Neg", emit_checked_neg)
    nodes = [helper.make_node("Neg", ["x"], ["y"])]
    model = _model(nodes, [_vi("x", [40])], [_vi("y", [40])])
    m = graphc.compile(model, target="llvm", threads=2)
    assert m.report()["backend"]["specializations"][0]["emitters"] == {"Neg": 1}
    x = np.arange(40, dtype=np.float32)
    with pytest.raises(ExecutionError, match="negative first element"):
        m(x - 1)
    np.testing.assert_array_equal(m(x), -x)


@pytest.mark.timeout(120)
def test_failures_never_leave_a_thread_waiting():
    # kernels and fallbacks alternate; the failing fallback comes late, so threads are at different steps
    # when it fails (this hung before the abort word was sticky and checked inside the barrier)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("NonZero", ["a"], ["nz"]),
             helper.make_node("Neg", ["x"], ["b"]), helper.make_node("Gather", ["b", "i"], ["g"], axis=0),
             helper.make_node("Abs", ["g"], ["y"])]
    model = _model(nodes, [_vi("x", [4, 3]), _vi("i", [2], TensorProto.INT64)],
                   [_vi("y", [2, 3]), _vi("nz", [2, "K"], TensorProto.INT64)])
    m = graphc.compile(model, target="llvm", threads=3)
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for _ in range(30):
        with pytest.raises(ExecutionError):
            m.run({"x": x, "i": np.array([0, 7], np.int64)})
        np.testing.assert_array_equal(m.run({"x": x, "i": np.array([1, 0], np.int64)})["y"], x[[1, 0]])


def test_automatic_threads_keep_small_models_on_one_thread(monkeypatch):
    from graphc.backends.llvm import executable

    monkeypatch.setattr(executable, "default_threads", lambda: 2)
    small = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [8])], [_vi("y", [8])])
    assert graphc.compile(small, target="llvm").executable.threads == 1
    assert graphc.compile(small, target="llvm", threads=2).executable.threads == 2  # asked for: honoured
    w = helper.make_tensor("w", TensorProto.FLOAT, [1024, 1024], np.zeros(1024 * 1024, np.float32))
    big = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [64, 1024])], [_vi("y", [64, 1024])],
                 [w])  # 134 MFLOP
    assert graphc.compile(big, target="llvm").executable.threads == 2
