"""An artifact saved where a C toolchain exists carries each specialisation (and the thread pool) as a shared
library; ``graphc.load`` + run use it through ctypes without importing llvmlite, with identical outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.backends.llvm import native

pytestmark = pytest.mark.skipif(native.linker() is None, reason="needs a C toolchain (cc) to link")


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3), np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((16 * 8 * 8, 10), np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "aot", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 10])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CHILD = r"""
import json, sys
import numpy as np
import graphc
model = graphc.load(sys.argv[1])
x = np.load(sys.argv[2])
y = model(x)
np.save(sys.argv[3], y)
print(json.dumps({"llvmlite": "llvmlite" in sys.modules, "load": model.executable.describe()["load"]}))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_load_and_run_without_llvmlite(tmp_path, threads):
    compiled = graphc.compile(_model(), target="llvm", threads=threads)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 8), np.float32)
    expected = compiled(x)
    path = compiled.save(tmp_path / "m.gcx")
    with zipfile.ZipFile(path) as zf:
        index = json.loads(zf.read("backend/llvm/index.json"))
        names = set(zf.namelist())
    assert "backend/llvm/spec0.so" in names and index["specializations"][0]["library"] == "llvm/spec0.so"
    assert ("backend/llvm/workers.so" in names) == (threads > 1)
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([sys.executable, "-c", CHILD, path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["llvmlite"] is False, report
    assert "shared library (no LLVM)" in report["load"][-1]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_a_library_not_matching_its_hash_is_never_loaded():
    library = native.link_shared([b"not an object file"])
    assert library is None  # the toolchain refused it: the artifact keeps only the object code
    with pytest.raises(ValueError, match="SHA-256"):
        native.load_shared(b"\x7fELF...", "0" * 64)


def test_another_host_uses_the_object_code(tmp_path, monkeypatch):
    from graphc.backends.llvm import artifacts

    compiled = graphc.compile(_model(), target="llvm", threads=1)
    path = compiled.save(tmp_path / "m.gcx")
    here = artifacts.native_host()
    monkeypatch.setattr(artifacts, "native_host", lambda: {**here, "cpu_flags": here["cpu_flags"][1:]})
    loaded = graphc.load(path)
    log = loaded.executable.describe()["load"]
    assert any("shared libraries not used: this CPU lacks" in line for line in log), log
    x = np.ones((2, 8, 8, 8), np.float32)
    np.testing.assert_array_equal(loaded(x), compiled(x))


def test_saving_a_loaded_model_keeps_its_libraries(tmp_path):
    compiled = graphc.compile(_model(), target="llvm", threads=1)
    loaded = graphc.load(compiled.save(tmp_path / "a.gcx"))
    again = loaded.save(tmp_path / "b.gcx")
    with zipfile.ZipFile(tmp_path / "a.gcx") as a, zipfile.ZipFile(again) as b:
        assert a.read("backend/llvm/spec0.so") == b.read("backend/llvm/spec0.so")
