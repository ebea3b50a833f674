"""The llvm backend's data-movement kernels (kernels/injective.py) against the reference, bit for bit.

Each model is one op (so that the node emitter, not fusion, is what runs); the tests check that the emitter
ran, or that what it must decline (run-time Gather indices, reflect padding) went to the reference kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("llvmlite")

import graphc  # noqa: E402

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _run(node, inputs: dict, out_shape, inits=(), opset=18, out_dtype=F, threads=0):
    graph = helper.make_graph([node], "m", [_vi(k, list(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
                                            for k, v in inputs.items()],
                              [_vi(o, list(out_shape), out_dtype) for o in node.output], initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    options = {"threads": threads} if threads else {}
    m = graphc.compile(model, target="llvm", **options)
    got = m.run(inputs)
    want = graphc.compile(model, target="reference").run(inputs)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])
    return m.executable.describe()["specializations"][0]


def _x(shape, dtype=np.float32):
    return (np.arange(int(np.prod(shape))) * 7 % 1000).astype(dtype).reshape(shape)


@pytest.mark.parametrize("shape, perm", [((67, 45), (1, 0)), ((2, 3, 33, 40), (0, 2, 3, 1)),
                                         ((2, 3, 4, 5), (3, 1, 0, 2)), ((5, 1, 7), (2, 1, 0)),
                                         ((2, 40, 70), (0, 2, 1))])
@pytest.mark.parametrize("threads", [1, 3])
def test_transpose(shape, perm, threads):
    out = tuple(shape[p] for p in perm)
    d = _run(helper.make_node("Transpose", ["x"], ["y"], perm=list(perm)), {"x": _x(shape)}, out, threads=threads)
    assert d["emitters"] == {"Transpose": 1}


def test_transpose_of_int64_and_bool():
    d = _run(helper.make_node("Transpose", ["x"], ["y"]), {"x": _x((3, 50), np.int64)}, (50, 3), out_dtype=I64)
    assert d["emitters"] == {"Transpose": 1}
    x = (_x((4, 9)) % 3 == 0)
    d = _run(helper.make_node("Transpose", ["x"], ["y"]), {"x": x}, (9, 4), out_dtype=TensorProto.BOOL)
    assert d["emitters"] == {"Transpose": 1}


@pytest.mark.parametrize("starts, ends, axes, steps", [([1, 0], [5, 10], [0, 1], [1, 3]),
                                                       ([-1], [-1000], [1], [-2]),
                                                       ([2, 100], [-1, 2], [0, 2], [1, -1])])
def test_slice_with_constant_operands(starts, ends, axes, steps):
    x = _x((6, 10, 8))
    inits = [helper.make_tensor(n, I64, [len(v)], v) for n, v in
             (("s", starts), ("e", ends), ("a", axes), ("p", steps))]
    want = x[tuple(slice(None) for _ in range(3))]
    index = [slice(None)] * 3
    for a, s, e, p in zip(axes, starts, ends, steps):
        index[a] = slice(s, e if e > -1000 else None, p)
    want = x[tuple(index)]
    d = _run(helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"]), {"x": x}, want.shape, inits)
    assert d["emitters"] == {"Slice": 1}


def test_concat_split_expand_tile():
    a, b = _x((2, 3, 4)), _x((2, 5, 4)) + 1
    d = _run(helper.make_node("Concat", ["a", "b"], ["y"], axis=1), {"a": a, "b": b}, (2, 8, 4))
    assert d["emitters"] == {"Concat": 1}
    d = _run(helper.make_node("Concat", ["a", "a"], ["y"], axis=-1), {"a": a}, (2, 3, 8))
    assert d["emitters"] == {"Concat": 1}
    split = helper.make_tensor("sp", I64, [3], [1, 4, 3])
    node = helper.make_node("Split", ["x", "sp"], ["p", "q", "r"], axis=1)
    graph = helper.make_graph([node], "m", [_vi("x", [2, 8, 5])],
                              [_vi("p", [2, 1, 5]), _vi("q", [2, 4, 5]), _vi("r", [2, 3, 5])], initializer=[split])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = _x((2, 8, 5))
    m = graphc.compile(model, target="llvm")
    got = m.run({"x": x})
    np.testing.assert_array_equal(got["q"], x[:, 1:5])
    np.testing.assert_array_equal(got["r"], x[:, 5:])
    assert m.executable.describe()["specializations"][0]["emitters"] == {"Split": 1}
    shape = helper.make_tensor("sh", I64, [3], [4, 3, 5])
    d = _run(helper.make_node("Expand", ["x", "sh"], ["y"]), {"x": _x((3, 1))}, (4, 3, 5), [shape])
    assert d["emitters"] == {"Expand": 1}
    reps = helper.make_tensor("r", I64, [2], [3, 2])
    d = _run(helper.make_node("Tile", ["x", "r"], ["y"]), {"x": _x((2, 5))}, (6, 10), [reps])
    assert d["emitters"] == {"Tile": 1}


@pytest.mark.parametrize("op, mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", "DCR")])
def test_depth_space(op, mode):
    if op == "DepthToSpace":
        x, out = _x((2, 8, 3, 5)), (2, 2, 6, 10)
    else:
        x, out = _x((2, 2, 6, 10)), (2, 8, 3, 5)
    attrs = {"blocksize": 2} if op == "SpaceToDepth" else {"blocksize": 2, "mode": mode}
    d = _run(helper.make_node(op, ["x"], ["y"], **attrs), {"x": x}, out)
    assert d["emitters"] == {op: 1}


def test_pad_constant_with_runtime_value_and_declined_reflect():
    pads = helper.make_tensor("p", I64, [6], [0, 2, 1, 1, 0, 3])
    x = _x((2, 3, 4))
    d = _run(helper.make_node("Pad", ["x", "p", "v"], ["y"]), {"x": x, "v": np.array(-5, np.float32)},
             (3, 5, 8), [pads])
    assert d["emitters"] == {"Pad": 1}
    d = _run(helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), {"x": x}, (3, 5, 8), [pads])
    assert d["fallback_ops"] == ["Pad"]


def test_gather_constant_and_runtime_indices():
    idx = helper.make_tensor("i", I64, [2, 2], [0, -1, 2, 1])
    d = _run(helper.make_node("Gather", ["x", "i"], ["y"], axis=1), {"x": _x((3, 4, 5))}, (3, 2, 2, 5), [idx])
    assert d["emitters"] == {"Gather": 1}
    for dtype in (np.int64, np.int32):  # run-time indices (an embedding lookup), negative ones wrapped
        d = _run(helper.make_node("Gather", ["x", "i"], ["y"], axis=0),
                 {"x": _x((3, 4)), "i": np.array([2, -3], dtype)}, (2, 4))
        assert d["emitters"] == {"Gather": 1}


def test_gather_runtime_index_out_of_range_is_an_execution_error():
    from graphc.errors import ExecutionError

    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
                                            helper.make_tensor_value_info("i", I64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    m = graphc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target="llvm")
    x = _x((3, 4))
    with pytest.raises(ExecutionError, match="out of range"):
        m(x, np.array([1, 3], np.int64))
    np.testing.assert_array_equal(m(x, np.array([1, -1], np.int64)), x[[1, 2]])


def test_reshape_copies_and_same_storage_is_free():
    shape = helper.make_tensor("s", I64, [2], [6, -1])
    d = _run(helper.make_node("Reshape", ["x", "s"], ["y"]), {"x": _x((3, 4, 5))}, (6, 10), [shape])
    assert d["emitters"] == {"Reshape": 1}
    d = _run(helper.make_node("Identity", ["x"], ["y"]), {"x": _x((3, 4), np.int32)}, (3, 4),
             out_dtype=TensorProto.INT32)
    assert d["fallbacks"] == 0
