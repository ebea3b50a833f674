"""Weights that lowering packed into panels are kept only as panels (backends/llvm/packed_weights.py): the run's
outputs, a new shape specialisation and a saved artifact see exactly the bytes of the original weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.ir.graph import Value

llvm = pytest.importorskip("graphc.backends.llvm.packed_weights")


def _model(batch="N", tied: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Conv (weights packed as A) -> Flatten -> Gemm (weights packed as B), plus, with ``tied``, a second
    use of the Gemm weight that keeps it (an Add of a run-time input reading it as it is)."""
    rng = np.random.default_rng(3)
    w_conv = rng.standard_normal((96, 32, 3, 3), np.float32)  # 108 KiB
    w_fc = rng.standard_normal((96 * 4 * 4, 200), np.float32)  # 1.2 MiB
    nodes = [helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 200])]
    if tied:
        nodes.append(helper.make_node("Add", ["wf", "s"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [96 * 4 * 4, 200]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 32, 4, 4])]
    if tied:
        inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(nodes, "packed", inputs,
                              outputs, [numpy_helper.from_array(w_conv, "wc"), numpy_helper.from_array(w_fc, "wf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, {"wc": w_conv, "wf": w_fc}


def _weights(compiled) -> dict[str, Value]:
    return {v.name: v for n in compiled.plan.graph.nodes for v in n.inputs if v is not None and v.is_constant}


def _feeds(n: int) -> dict:
    return {"x": np.random.default_rng(n).standard_normal((n, 32, 4, 4), np.float32)}


def test_packed_weights_are_released_and_rebuilt_exactly():
    model, arrays = _model(batch=2)
    compiled = graphc.compile(model, target="llvm", threads=1)
    weights = _weights(compiled)
    assert isinstance(weights["wc"], llvm.PackedWeight) and isinstance(weights["wf"], llvm.PackedWeight)
    assert compiled.executable.released_weight_bytes == arrays["wc"].nbytes + arrays["wf"].nbytes
    for name, array in arrays.items():
        rebuilt = weights[name].const
        assert rebuilt.dtype == array.dtype and rebuilt.shape == array.shape
        assert rebuilt.tobytes() == array.tobytes()  # bit for bit, not just close
        assert not rebuilt.flags.writeable
    reference = graphc.compile(model, target="reference")
    feeds = _feeds(2)
    np.testing.assert_allclose(compiled.run(feeds)["y"], reference.run(feeds)["y"], rtol=1e-4, atol=1e-3)


def test_outputs_identical_to_a_build_that_keeps_the_weights(monkeypatch):
    model, _ = _model(batch=2)
    feeds = _feeds(2)
    released = graphc.compile(model, target="llvm", threads=1).run(feeds)["y"]
    monkeypatch.setattr(llvm, "MIN_RELEASE_BYTES", 1 << 40)  # nothing is released
    kept = graphc.compile(model, target="llvm", threads=1)
    assert not any(isinstance(v, llvm.PackedWeight) for v in _weights(kept).values())
    np.testing.assert_array_equal(kept.run(feeds)["y"], released)


def test_a_new_specialisation_packs_the_rebuilt_weights():
    model, _ = _model(batch="N")
    compiled = graphc.compile(model, target="llvm", threads=1)
    reference = graphc.compile(model, target="reference")
    first = compiled.run(_feeds(1))["y"]  # lowers for N=1, releases the weights
    assert isinstance(_weights(compiled)["wf"], llvm.PackedWeight)
    for n in (3, 1):  # N=3 rebuilds them to pack them again
        np.testing.assert_allclose(compiled.run(_feeds(n))["y"], reference.run(_feeds(n))["y"], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(compiled.run(_feeds(1))["y"], first)


def test_a_weight_read_as_it_is_is_kept():
    model, arrays = _model(batch=2, tied=True)
    compiled = graphc.compile(model, target="llvm", threads=1)
    weights = _weights(compiled)
    assert type(weights["wf"]) is Value  # the Add reads it: the packed copy is not its only one
    out = compiled.run({**_feeds(2), "s": np.full(1, 0.5, np.float32)})
    np.testing.assert_array_equal(out["z"], arrays["wf"] + np.float32(0.5))


def test_saved_artifact_holds_the_original_weights(tmp_path):
    model, arrays = _model(batch=2)
    compiled = graphc.compile(model, target="llvm", threads=1)
    path = compiled.save(tmp_path / "m.gcx")
    loaded = graphc.load(path)
    for name, array in arrays.items():
        assert np.asarray(_weights(loaded)[name].const).tobytes() == array.tobytes()
    feeds = _feeds(2)
    np.testing.assert_array_equal(loaded.run(feeds)["y"], compiled.run(feeds)["y"])


def test_assigning_a_weight_makes_it_a_plain_value_again():
    model, arrays = _model(batch=2)
    compiled = graphc.compile(model, target="llvm", threads=1)
    value = _weights(compiled)["wf"]
    value.const = np.zeros(3, np.float32)
    assert type(value) is Value and value.const.shape == (3,)
