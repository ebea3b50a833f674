"""The llvm backend's per-call path (LLVMExecutable._run/_collect, check_inputs) after it was made cheaper:
the checks still fire on every run, outputs are still the caller's own fresh arrays, and the unusual outputs
(a graph input, a constant, one value returned twice) still come back right."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import GraphcError, InputError

pytest.importorskip("llvmlite")

F = TensorProto.FLOAT


def _relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", F, [2, 16])],
                              [helper.make_tensor_value_info("y", F, [2, 16])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


@pytest.mark.parametrize("threads", [1, 2])
def test_wrong_inputs_are_still_refused_after_many_good_runs(threads):
    m = graphc.compile(_relu_model(), target="llvm", threads=threads)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    for _ in range(5):
        np.testing.assert_array_equal(m.run({"x": x})["y"], np.maximum(x, 0))
    bad = [x.astype(np.float64), x.reshape(4, 8), x[:1], x.reshape(1, 2, 16), "text"]
    for value in bad:
        with pytest.raises(GraphcError):
            m.run({"x": value})
    with pytest.raises(InputError, match="dtype differs"):
        m.run({"x": x.astype(np.float64)})
    with pytest.raises(InputError, match="missing"):
        m.run({})
    np.testing.assert_array_equal(m.run({"x": x})["y"], np.maximum(x, 0))  # and it still runs


def test_outputs_are_fresh_arrays_the_caller_owns():
    m = graphc.compile(_relu_model(), target="llvm", threads=1)
    x = np.ones((2, 16), np.float32)
    first = m.run({"x": x})["y"]
    first[...] = -5.0  # the caller may write into what it got
    second = m.run({"x": x})["y"]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(second, x)
    np.testing.assert_array_equal(first, -5.0)


def test_read_only_and_non_contiguous_inputs():
    m = graphc.compile(_relu_model(), target="llvm", threads=1)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(m.run({"x": ro})["y"], np.maximum(x, 0))
    wide = np.zeros((2, 32), np.float32)
    wide[:, ::2] = x
    np.testing.assert_array_equal(m.run({"x": wide[:, ::2]})["y"], np.maximum(x, 0))


def test_an_input_a_constant_and_a_value_twice_as_outputs():
    c = numpy_helper.from_array(np.arange(3, dtype=np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["c"], ["k"])], "outs",
        [helper.make_tensor_value_info("x", F, [2, 16])],
        [helper.make_tensor_value_info("y", F, [2, 16]), helper.make_tensor_value_info("x", F, [2, 16]),
         helper.make_tensor_value_info("k", F, [3]), helper.make_tensor_value_info("y", F, [2, 16])],
        initializer=[c])
    m = graphc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), target="llvm",
                       threads=1)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    for _ in range(2):  # the first run works out where each output comes from; the second uses that
        # (the executable's list: CompiledModel.run returns a dict by name, where "y" twice is one entry)
        y, x_out, k, y_again = m.executable.run([x])
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_array_equal(y_again, np.maximum(x, 0))
        np.testing.assert_array_equal(x_out, x)
        np.testing.assert_array_equal(k, np.arange(3, dtype=np.float32))
        assert not np.shares_memory(x_out, x)  # a copy: the caller's input is not handed back
        assert y is not y_again and not np.shares_memory(y, y_again)


def test_arrays_of_ml_dtypes_pass_through_the_run_path():
    """bfloat16 / float8 arrays export no buffer to ctypes; their address is taken the slow way (the ONNX
    Cast and QuantizeLinear tests to float8 found it)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from graphc.backends.llvm.executable import _address

    for dtype in (ml_dtypes.bfloat16, ml_dtypes.float8_e5m2, np.float32):
        x = np.arange(8).astype(dtype)
        assert _address(x) == x.ctypes.data
