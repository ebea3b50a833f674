"""LSTM as one generated kernel, against the reference: the register-blocked path (4H a multiple of 64), its
scalar tail, both directions, batches, initial states, and all three outputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc

pytest.importorskip("llvmlite")


@pytest.mark.parametrize("hidden, batch, direction", [(32, 1, "forward"), (20, 3, "bidirectional"),
                                                       (16, 2, "reverse")])
def test_lstm_matches_the_reference(hidden, batch, direction):
    rng = np.random.default_rng(hidden)
    seq, n_in = 5, 12
    dirs = 2 if direction == "bidirectional" else 1
    w = numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, n_in)).astype(np.float32) * 0.3, "W")
    r = numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32) * 0.3, "R")
    bias = numpy_helper.from_array(rng.standard_normal((dirs, 8 * hidden)).astype(np.float32) * 0.1, "B")
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"],
                            hidden_size=hidden, direction=direction)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info("x", f, [seq, batch, n_in]),
         helper.make_tensor_value_info("h0", f, [dirs, batch, hidden]),
         helper.make_tensor_value_info("c0", f, [dirs, batch, hidden])],
        [helper.make_tensor_value_info("y", f, [seq, dirs, batch, hidden]),
         helper.make_tensor_value_info("yh", f, [dirs, batch, hidden]),
         helper.make_tensor_value_info("yc", f, [dirs, batch, hidden])], initializer=[w, r, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    feeds = {"x": rng.standard_normal((seq, batch, n_in)).astype(np.float32),
             "h0": rng.standard_normal((dirs, batch, hidden)).astype(np.float32),
             "c0": rng.standard_normal((dirs, batch, hidden)).astype(np.float32)}
    llvm = graphc.compile(model, target="llvm")
    assert llvm.report()["backend"]["specializations"][0]["emitters"] == {"LSTM": 1}
    got, want = llvm.run(feeds), graphc.compile(model, target="reference").run(feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
