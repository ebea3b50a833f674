"""Compiling a model with large weights makes no whole-model copies beyond the ones it needs, and a model
compiled from a file keeps the file, not the parsed proto, as its source model.

The peak is measured in a fresh child process from /proc/self/status: ``VmHWM`` (the peak resident set of the
child's own address space, which -- unlike ``ru_maxrss`` -- does not inherit the parent's high-water mark at
exec), reset with ``/proc/self/clear_refs`` once the imports and a warm-up compile are done, so that what is
measured is the compile of the model alone. The bounds are in units of the model's weight bytes W and leave
room for allocator noise; what they rule out is one more serialised copy of the model (each is about W).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.errors import ModelLoadError
from graphc.sources import ModelFile

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")

LAYERS, WIDTH = 16, 1024  # 16 float32 matrices of 4 MiB: W = 64 MiB


def _chain_model(layers: int = LAYERS, width: int = WIDTH, seed: int = 0) -> onnx.ModelProto:
    """x @ W0 @ W1 ... : weights nothing can fold away, so the compiled plan holds exactly W bytes of them."""
    rng = np.random.default_rng(seed)
    weights = [numpy_helper.from_array(rng.standard_normal((width, width), np.float32), f"w{i}")
               for i in range(layers)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"],
                              ["y" if i == layers - 1 else f"h{i}"]) for i in range(layers)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, width])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CHILD = r"""
import json, sys
import numpy as np, onnx
import graphc
from graphc.backends import get_backend

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

mode, path, small = sys.argv[1], sys.argv[2], sys.argv[3]
get_backend("reference")
graphc.compile(small, target="reference")  # warm-up: lazily imported modules, ONNX's schema tables
source = onnx.load(path) if mode == "proto" else path
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak restarts from here
model = graphc.compile(source, target="reference")
print(json.dumps({"before": before, "peak": status("VmHWM:"), "after": status("VmRSS:")}))
"""


@pytest.fixture(scope="module")
def chain_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    model = _chain_model()
    onnx.save(model, tmp / "chain.onnx")
    onnx.save(_chain_model(layers=2, width=8), tmp / "small.onnx")
    weight_bytes = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    return str(tmp / "chain.onnx"), str(tmp / "small.onnx"), weight_bytes


def _compile_peak(mode: str, files) -> tuple[float, float]:
    path, small, weight_bytes = files
    done = subprocess.run([sys.executable, "-c", CHILD, mode, path, small], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return (out["peak"] - out["before"]) / weight_bytes, (out["after"] - out["before"]) / weight_bytes


def test_compile_from_a_file_peaks_at_two_copies_and_keeps_one(chain_files):
    # reading the file (1 W) while parsing it (1 W), then the proto (1 W) while its weights become arrays (1 W);
    # the proto is dropped once imported. ONNX's checker or shape inference seeing the weights would add 1-3 W.
    peak, kept = _compile_peak("path", chain_files)
    assert peak < 2.5, f"compiling from a file peaked at {peak:.2f} x the weight bytes"
    assert kept < 1.5, f"{kept:.2f} x the weight bytes stay after the compile (the parsed proto is kept?)"


def test_compile_of_a_held_proto_adds_one_copy(chain_files):
    # the caller holds the proto; the compile adds the graph's arrays (1 W) and nothing of the model's size
    peak, _ = _compile_peak("proto", chain_files)
    assert peak < 1.5, f"compiling a proto peaked at {peak:.2f} x the weight bytes"


# -- the source model of a model compiled from a path -------------------------------------------------------------
@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_chain_model(layers=2, width=8), path)
    return path


def test_source_model_of_a_path_is_the_file_read_again(small_file, tmp_path):
    compiled = graphc.compile(small_file, target="reference")
    assert isinstance(compiled._source_model, ModelFile)  # the parsed proto was not kept
    source = compiled.source_model
    assert source.SerializeToString() == small_file.read_bytes()
    assert source.graph.name == "chain" and len(source.graph.initializer) == 2
    loaded = graphc.load(compiled.save(tmp_path / "m.gcx"))
    assert loaded.source_model.SerializeToString() == small_file.read_bytes()
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(loaded(x), compiled(x))


def test_source_model_of_a_changed_file_is_none_not_the_new_one(small_file, tmp_path):
    compiled = graphc.compile(small_file, target="reference")
    onnx.save(_chain_model(layers=3, width=8), small_file)  # a different model under the same name
    assert compiled.source_model is None
    loaded = graphc.load(compiled.save(tmp_path / "m.gcx"))  # saved without it, still runs
    assert loaded.source_model is None
    x = np.ones((2, 8), np.float32)
    np.testing.assert_array_equal(loaded(x), compiled(x))


def test_source_model_bytes_are_checked_even_when_the_file_looks_the_same(small_file):
    compiled = graphc.compile(small_file, target="reference")
    stat = os.stat(small_file)
    other = _chain_model(layers=2, width=8, seed=1).SerializeToString()
    assert len(other) == stat.st_size
    with open(small_file, "r+b") as f:  # same inode, size and modification time; other weights
        f.write(other)
    os.utime(small_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ModelLoadError, match="changed since it was compiled"):
        compiled.source_model.SerializeToString()
