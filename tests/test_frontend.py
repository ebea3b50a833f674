import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import InvalidModelError, ModelLoadError, UnsupportedOpError
from graphc.frontend import load_onnx
from graphc.ir import TensorType


def _matmul_model(w_tensor=None, opset=17):
    w = w_tensor if w_tensor is not None else numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_symbolic_dims_flow_through_shape_rules():
    graph = load_onnx(_matmul_model())
    (y,) = graph.outputs
    assert graph.inputs[0].type == TensorType(np.float32, ("batch", 4))
    assert y.type == TensorType(np.float32, ("batch", 3))


def test_constant_nodes_become_weights():
    const = helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(np.eye(4, 3, dtype=np.float32)))
    graph = helper.make_graph([const, helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    g = load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in g.nodes] == ["MatMul"]
    assert g.nodes[0].inputs[1].is_constant


def test_all_unsupported_ops_reported_at_once():
    nodes = [helper.make_node("FooOp", ["x"], ["a"], domain="com.example"),
             helper.make_node("BarOp", ["a"], ["b"], domain="com.example"),
             helper.make_node("MatMul", ["b", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as info:
        graphc.compile(model, target="reference")
    assert info.value.ops == [("com.example", "BarOp", 1), ("com.example", "FooOp", 1)]
    assert "BarOp" in str(info.value) and "FooOp" in str(info.value)


def test_subgraph_reads_outer_scope_values():
    then_g = helper.make_graph([helper.make_node("Softmax", ["x"], ["t"], axis=-1)], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    else_g = helper.make_graph([helper.make_node("LogSoftmax", ["x"], ["e"], axis=-1)], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                              [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = graphc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target="reference")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    soft = np.exp(x - x.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_allclose(model.run({"c": np.array(True), "x": x})["y"], soft, rtol=1e-6)
    np.testing.assert_allclose(model.run({"c": np.array(False), "x": x})["y"], np.log(soft), rtol=1e-5)


def _external(tmp_path, location, data=np.arange(12, dtype=np.float32)):
    tensor = numpy_helper.from_array(data.reshape(4, 3), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": str(data.nbytes)}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    path = tmp_path / "model.onnx"
    onnx.save(_matmul_model(tensor), path)
    return path


def test_external_data_inside_model_dir(tmp_path):
    np.arange(12, dtype=np.float32).tofile(tmp_path / "weights.bin")
    model = graphc.compile(_external(tmp_path, "weights.bin"), target="reference")
    y = model.run({"x": np.ones((1, 4), np.float32)})["y"]
    np.testing.assert_allclose(y, np.arange(12, dtype=np.float32).reshape(4, 3).sum(0, keepdims=True))


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/../../weights.bin", "missing.bin"])
def test_external_data_outside_model_dir_is_refused(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    np.arange(12, dtype=np.float32).tofile(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError):
        graphc.compile(_external(inner, location), target="reference")


def test_external_data_symlink_escape_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    np.arange(12, dtype=np.float32).tofile(tmp_path / "weights.bin")
    os.symlink(tmp_path / "weights.bin", inner / "link.bin")
    with pytest.raises(ModelLoadError, match="outside"):
        graphc.compile(_external(inner, "link.bin"), target="reference")


def test_external_data_too_short_is_refused(tmp_path):
    np.arange(5, dtype=np.float32).tofile(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError):
        graphc.compile(_external(tmp_path, "weights.bin"), target="reference")


def test_negative_declared_dim_is_refused():
    model = _matmul_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -4
    with pytest.raises(InvalidModelError):
        load_onnx(model)


def test_redefined_value_is_refused():
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"]), helper.make_node("MatMul", ["y", "y"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    with pytest.raises(InvalidModelError):
        load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_models_over_the_protobuf_limit_keep_external_data(tmp_path, monkeypatch):
    """Past 2 GB the checker and ONNX inference cannot see the model whole; import must still work.

    The limit is lowered so that a small model takes that path.
    """
    from graphc.frontend import onnx_import

    monkeypatch.setattr(onnx_import, "_TWO_GB", 64)
    np.arange(12, dtype=np.float32).tofile(tmp_path / "weights.bin")
    model = graphc.compile(_external(tmp_path, "weights.bin"), target="reference")
    y = model.run({"x": np.ones((2, 4), np.float32)})["y"]
    assert y.shape == (2, 3) and y[0, 0] == 0 + 3 + 6 + 9


# -- ONNX's checker and shape inference see large weights by type only (graphc/frontend/skeleton.py) -------------
BIG = (300, 64)  # 76,800 bytes of float32: over skeleton.LARGE_TENSOR_BYTES


def _big_weight_model(big=None, ir_version=None, extra_initializers=()):
    """y = reshape(x @ W, shape) with a large W and a small int64 ``shape`` that inference must read."""
    big = big if big is not None else numpy_helper.from_array(
        np.arange(np.prod(BIG), dtype=np.float32).reshape(BIG) / 1000, "W")
    shape = numpy_helper.from_array(np.array([4, 32], np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, BIG[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
                              [big, shape, *extra_initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def test_onnx_view_declares_large_weights_by_type_and_keeps_small_ones():
    from graphc.frontend.onnx_import import onnx_view

    model = _big_weight_model()
    view = onnx_view(model, None)
    assert [t.name for t in view.graph.initializer] == ["shape"]
    declared = {vi.name: vi.type.tensor_type for vi in view.graph.input}
    assert declared["W"].elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in declared["W"].shape.dim] == list(BIG)
    assert view.ByteSize() < 4096 < model.ByteSize()
    # shape inference still reads the small initializer's value (Reshape's target shape)
    inferred = onnx.shape_inference.infer_shapes(view, data_prop=True)
    y = next(vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output) if vi.name == "y")
    assert [d.dim_value for d in y.type.tensor_type.shape.dim] == [4, 32]
    # and the model is untouched; the import gets every weight and the right output type
    assert [t.name for t in model.graph.initializer] == ["W", "shape"]
    compiled = graphc.compile(model, target="reference")
    x = np.ones((2, BIG[0]), np.float32)
    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(compiled.run({"x": x})["y"], (x @ w).reshape(4, 32), rtol=1e-5)
    assert compiled.graph.outputs[0].type == TensorType(np.float32, (4, 32))


def test_checker_still_judges_nodes_next_to_large_weights():
    model = _big_weight_model()
    model.graph.node[0].attribute.append(helper.make_attribute("alpha", 1.0))  # MatMul has no such attribute
    with pytest.raises(InvalidModelError, match="alpha"):
        graphc.compile(model, target="reference")


def test_checker_still_judges_large_initializers_themselves():
    twin = numpy_helper.from_array(np.zeros(BIG, np.float32), "W")
    with pytest.raises(InvalidModelError, match="not unique"):
        graphc.compile(_big_weight_model(extra_initializers=[twin]), target="reference")
    with pytest.raises(InvalidModelError, match="not in graph input"):  # IR 3: weights must be graph inputs
        graphc.compile(_big_weight_model(ir_version=3), target="reference")
    short = numpy_helper.from_array(np.zeros(BIG, np.float32), "W")
    short.raw_data = short.raw_data[:-4]
    with pytest.raises(InvalidModelError, match="'W'"):
        graphc.compile(_big_weight_model(big=short), target="reference")


def _big_external(tmp_path, location, length=None):
    data = np.arange(np.prod(BIG), dtype=np.float32).reshape(BIG) / 1000
    tensor = numpy_helper.from_array(data, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": str(data.nbytes if length is None else length)}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    path = tmp_path / "model.onnx"
    onnx.save(_big_weight_model(big=tensor), path)
    return path, data


def test_large_external_weights_are_read_once_and_checked(tmp_path):
    path, data = _big_external(tmp_path, "weights.bin")
    data.tofile(tmp_path / "weights.bin")
    compiled = graphc.compile(path, target="reference")
    x = np.ones((2, BIG[0]), np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], (x @ data).reshape(4, 32), rtol=1e-5)
    assert compiled.graph.outputs[0].type == TensorType(np.float32, (4, 32))  # inference ran on the view
    with pytest.raises(ModelLoadError, match="bytes"):  # declared length disagrees with the type
        graphc.compile(_big_external(tmp_path, "weights.bin", length=data.nbytes - 4)[0], target="reference")
    for location in ["../weights.bin", "/etc/passwd", "missing.bin"]:
        with pytest.raises(ModelLoadError):
            graphc.compile(_big_external(tmp_path, location)[0], target="reference")
    with pytest.raises(ModelLoadError, match="path"):  # handed over as a proto: no directory to read it from
        graphc.compile(onnx.load(path, load_external_data=False), target="reference")
