"""llvm artifacts keep machine code: a load uses it when it fits this CPU and this build, re-JITs otherwise."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphc

pytest.importorskip("llvmlite")


def _model():
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.linspace(-1, 1, 64, dtype=np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Add", ["t", "x"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture()
def saved(tmp_path):
    m = graphc.compile(_model(), target="llvm")
    path = m.save(tmp_path / "m.gcx")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    return m, path, x


def test_artifact_holds_machine_code_and_ir(saved):
    _, path, _ = saved
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        index = json.loads(zf.read("backend/llvm/index.json"))
    assert {"backend/llvm/index.json", "backend/llvm/spec0.o", "backend/llvm/spec0.ll"} <= names
    assert index["specializations"][0]["input_shapes"] == [[4, 8]]
    assert "avx2" in index["features"] or index["triple"].startswith(("aarch64", "arm"))


def test_load_uses_the_machine_code_and_gives_identical_outputs(saved):
    m, path, x = saved
    loaded = graphc.load(path)
    assert any("machine code loaded" in line for line in loaded.executable.describe()["load"])
    np.testing.assert_array_equal(loaded(x), m(x))


def test_a_cpu_lacking_a_feature_re_jits_from_the_plan(saved, monkeypatch):
    from graphc.backends.llvm import artifacts

    m, path, x = saved
    monkeypatch.setattr(artifacts, "host_features", lambda: ["sse2"])
    loaded = graphc.load(path)
    log = loaded.executable.describe()["load"]
    assert any("lacks" in line and "re-JIT" in line for line in log), log
    np.testing.assert_array_equal(loaded(x), m(x))


def test_code_from_another_lowering_is_not_used(saved, monkeypatch):
    from graphc.backends.llvm import executable

    m, path, x = saved
    monkeypatch.setattr(executable, "ir_digest", lambda program: "0" * 64)
    loaded = graphc.load(path)
    assert any("does not match" in line for line in loaded.executable.describe()["load"])
    np.testing.assert_array_equal(loaded(x), m(x))
