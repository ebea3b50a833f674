"""Shared by the llvm kernel tests: build a one-node (+ optional Relu) model, run it on llvm and reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc

pytest.importorskip("llvmlite")


def single_op_model(op: str, inputs: dict, consts: dict, attrs: dict | None = None, relu: bool = False,
                    n_outputs: int = 1, opset: int = 17):
    """``inputs``: name -> shape (graph inputs); ``consts``: name -> array (initializers), op inputs in that order."""
    names = list(inputs) + list(consts)
    outs = [f"y{i}" for i in range(n_outputs)]
    nodes = [helper.make_node(op, names, outs, **(attrs or {}))]
    last = outs[0]
    if relu:
        nodes.append(helper.make_node("Relu", [outs[0]], ["r"]))
        last = "r"
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(model, seed: int = 0, threads: int | None = None):
    """(llvm output, reference output, llvm executable description)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    opts = {"threads": threads} if threads else {}
    m = graphc.compile(model, target="llvm", **opts)
    got = m.run(feeds)
    want = graphc.compile(model, target="reference").run(feeds)
    got = got[0] if isinstance(got, (list, tuple)) else next(iter(got.values()))
    want = want[0] if isinstance(want, (list, tuple)) else next(iter(want.values()))
    return got, want, m.executable.describe()["specializations"][0]


def assert_generated(desc: dict, emitter: str) -> None:
    assert desc["fallback_ops"] == [], desc
    assert desc["emitters"].get(emitter, 0) >= 1, desc


def assert_close(got, want, rtol: float = 1e-5) -> None:
    assert got.shape == want.shape
    scale = max(float(np.abs(want).max()), 1e-6)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)
