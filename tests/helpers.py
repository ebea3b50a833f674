"""Small ONNX model builders shared by tests."""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp_model(batch="N", features=4, hidden=5, classes=3, seed=0, opset=17) -> onnx.ModelProto:
    """x[N,4] -> MatMul -> Add -> Relu -> MatMul -> Softmax, weights seeded."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
                              [w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def mlp_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The MLP computed directly with numpy (an oracle independent of graphc's op code)."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(x @ w["w1"] + w["b1"], 0)
    logits = h @ w["w2"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def json_paths(doc, prefix=()):
    """Every path (tuple of keys and indices) into a JSON document, the root's ``()`` first."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from json_paths(v, prefix + (i,))


def artifact_parts(path) -> dict[str, bytes]:
    """Every member of an artifact (a zip), by name."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_artifact_parts(path, parts: dict[str, bytes]) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for n, data in parts.items():
            zf.writestr(n, data)


def rewrite_artifact_part(path, name, mutate, rehash=False) -> None:
    """Replace part ``name`` by ``mutate(bytes)``; with ``rehash`` also fix its checksum in the manifest."""
    import hashlib
    import json

    parts = artifact_parts(path)
    parts[name] = mutate(parts[name])
    if rehash:
        manifest = json.loads(parts["manifest.json"])
        manifest["parts"][name] = {"sha256": hashlib.sha256(parts[name]).hexdigest(), "size": len(parts[name])}
        parts["manifest.json"] = json.dumps(manifest).encode()
    write_artifact_parts(path, parts)


def lstm_model(hidden: int, batch: int, seq: int, direction: str, n_in: int = 24, seed: int = 0,
               weight_scale: float = 0.2, state_scale: float = 0.5):
    """One ONNX LSTM node (opset 14, bias and initial states given) and seeded feeds for it."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    w = numpy_helper.from_array(weight_scale * rng.standard_normal((dirs, 4 * hidden, n_in)).astype(np.float32), "W")
    r = numpy_helper.from_array(weight_scale * rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32),
                                "R")
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
             "h0": rng.standard_normal((dirs, batch, hidden)).astype(np.float32) * state_scale,
             "c0": rng.standard_normal((dirs, batch, hidden)).astype(np.float32) * state_scale}
    return model, feeds


@contextlib.contextmanager
def stopped(pid: int):
    """The process ``pid`` stopped (SIGSTOP: alive, but answering nothing) for the block, continued after it
    if it still exists: how the tests make a worker hang."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
