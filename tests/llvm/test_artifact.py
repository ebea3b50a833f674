"""llvm artifacts keep machine code and the program's layout: a load runs them as they are (no lowering), lowers
again when the plan or thread count differs, and re-JITs when the code does not fit this CPU or this build."""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper

import graphc
from graphc.errors import ArtifactError, ExecutionError
from tests.helpers import artifact_parts as _parts
from tests.helpers import json_paths
from tests.helpers import rewrite_artifact_part as _rewrite

pytest.importorskip("llvmlite")


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model():
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], np.linspace(-1, 1, 64, dtype=np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Add", ["t", "x"], ["y"])]
    graph = helper.make_graph(nodes, "m", [_vi("x", [4, 8])], [_vi("y", [4, 8])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rich_model():
    """Packed weights (Conv, MatMul), a weight read as it is (Add), a data-dependent fallback (NonZero) feeding
    another (Cast), control flow reading outer values (If), a run-time Gather that can fail."""
    rng = np.random.default_rng(3)
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32)),
             helper.make_tensor("w", TensorProto.FLOAT, [48, 8], rng.standard_normal(384).astype(np.float32)),
             helper.make_tensor("b", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32)),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("shape", TensorProto.INT64, [2], [1, 48])]
    then = helper.make_graph([helper.make_node("Add", ["y", "y"], ["t"])], "then", [], [_vi("t", [1, 8])])
    els = helper.make_graph([helper.make_node("Neg", ["y"], ["e"])], "else", [], [_vi("e", [1, 8])])
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"]),
             helper.make_node("NonZero", ["y"], ["nz"]),
             helper.make_node("Cast", ["nz"], ["nzf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=els),
             helper.make_node("Gather", ["y", "i"], ["g"], axis=1)]
    graph = helper.make_graph(nodes, "rich", [_vi("x", [1, 3, 3, 4]), _vi("i", [3], TensorProto.INT64)],
                              [_vi("z", [1, 8]), _vi("nzf", [2, "K"]), _vi("g", [1, 3])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rich_feeds(seed=0, bad=False):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, 3, 3, 4)).astype(np.float32),
            "i": np.array([0, 9 if bad else 5, 7], np.int64)}


@pytest.fixture()
def saved(tmp_path):
    m = graphc.compile(_model(), target="llvm")
    path = m.save(tmp_path / "m.gcx")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    return m, path, x


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    m = graphc.compile(_rich_model(), target="llvm", threads=2)
    path = m.save(tmp_path_factory.mktemp("rich") / "rich.gcx")
    return m, path


def _edit_json(path, name, edit):
    def mutate(data):
        doc = json.loads(data)
        return json.dumps(edit(doc) or doc).encode()
    _rewrite(path, name, mutate, rehash=True)


def _load_log(model) -> list[str]:
    return model.executable.describe()["load"]


def _same_outputs(a, b, feeds):
    out_a, out_b = a.run(feeds), b.run(feeds)
    assert list(out_a) == list(out_b)
    for name in out_a:
        np.testing.assert_array_equal(out_a[name], out_b[name], err_msg=name)


# -- what is kept ------------------------------------------------------------------------------------------------
def test_artifact_holds_machine_code_layout_constants_and_ir(saved):
    _, path, _ = saved
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        index = json.loads(zf.read("backend/llvm/index.json"))
        manifest = json.loads(zf.read("manifest.json"))
    assert {"backend/llvm/index.json", "backend/llvm/spec0.o", "backend/llvm/spec0.ll",
            "backend/llvm/spec0.layout.json", "backend/llvm/spec0.const"} <= names
    spec = index["specializations"][0]
    assert spec["input_shapes"] == [[4, 8]] and spec["threads"] >= 1
    assert index["plan_sha256"] == manifest["parts"]["plan.json"]["sha256"]
    assert "avx2" in index["features"] or index["triple"].startswith(("aarch64", "arm"))


def test_weights_and_packed_constants_are_stored_aligned_and_mapped_on_load(rich):
    m, path = rich
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        for name in ("weights.bin", "backend/llvm/spec0.const"):
            info = zf.getinfo(name)
            f.seek(info.header_offset)
            header = f.read(30)
            start = info.header_offset + 30 + sum(struct.unpack("<HH", header[26:30]))
            assert start % 64 == 0, name
    loaded = graphc.load(path)
    program = next(iter(loaded.executable.specializations.values())).program
    consts = [s.array for s in program.slots if s.kind == "const" and s.array.size]
    assert any(s.value is None for s in program.slots if s.kind == "const")  # a packed one
    assert any(s.value is not None for s in program.slots if s.kind == "const")  # a weight bound as it is

    def root(a):
        while isinstance(a, np.ndarray):
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    assert consts and all(isinstance(root(a), mmap.mmap) for a in consts)
    weights = [v.const for v in loaded.graph.initializers.values() if v.const.size]
    assert weights and all(isinstance(root(w), mmap.mmap) for w in weights)


# -- loading as it is ------------------------------------------------------------------------------------------------
def test_load_runs_the_stored_layout_without_lowering(rich, monkeypatch):
    from graphc.backends.llvm import program as program_mod

    m, path = rich

    def refuse(self):
        raise AssertionError("a load must not lower the plan")

    monkeypatch.setattr(program_mod.Program, "__post_init__", refuse)
    loaded = graphc.load(path)
    assert any("stored layout (no lowering)" in line for line in _load_log(loaded)), _load_log(loaded)
    assert loaded.report()["fallback_ops"] == m.report()["fallback_ops"] and m.report()["fallback_ops"]
    assert loaded.executable.describe()["specializations"] == m.executable.describe()["specializations"]
    for seed in range(3):
        _same_outputs(m, loaded, _rich_feeds(seed))
    with pytest.raises(ExecutionError) as theirs:
        m.run(_rich_feeds(bad=True))
    with pytest.raises(ExecutionError) as ours:
        loaded.run(_rich_feeds(bad=True))
    assert str(ours.value) == str(theirs.value)
    _same_outputs(m, loaded, _rich_feeds(4))  # and it still runs after the error


def test_layout_round_trip_keeps_what_the_code_assumes(rich):
    from graphc.backends.llvm.artifacts import ir_digest
    from graphc.backends.llvm.layout import StoredProgram, layout_of

    m, _ = rich
    (shapes, compiled), = m.executable.specializations.items()
    doc, blob = layout_of(compiled.program)
    raw = np.zeros(doc["constants_bytes"] + 64, np.uint8)
    buf = raw[(-raw.ctypes.data) % 64:][:doc["constants_bytes"]]
    for offset, array in blob:
        buf[offset:offset + array.nbytes] = array.reshape(-1).view(np.uint8)
    stored = StoredProgram(m.plan, json.loads(json.dumps(doc)), buf, list(shapes))
    assert ir_digest(stored) == ir_digest(compiled.program)
    again, _ = layout_of(stored)
    assert again == doc
    assert doc["fallbacks"] and doc["values"] and doc["errors"]


def test_save_again_after_load_keeps_code_layout_constants_and_ir(rich, tmp_path):
    m, path = rich
    loaded = graphc.load(path)
    again = graphc.load(loaded.save(tmp_path / "again.gcx"))
    assert any("no lowering" in line for line in _load_log(again))
    first, second = _parts(path), _parts(tmp_path / "again.gcx")
    for name in ("spec0.o", "spec0.ll", "spec0.layout.json", "spec0.const"):
        assert first[f"backend/llvm/{name}"] == second[f"backend/llvm/{name}"], name
    _same_outputs(m, again, _rich_feeds(1))


def test_symbolic_batch_keeps_every_specialisation(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.arange(12, dtype=np.float32) / 7)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "sym", [_vi("x", ["N", 4])], [_vi("y", ["N", 3])], initializer=[w])
    m = graphc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target="llvm")
    xs = {n: np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32) for n in (2, 5, 7)}
    m(xs[2]), m(xs[5])
    loaded = graphc.load(m.save(tmp_path / "sym.gcx"))
    for n in (2, 5, 7):
        np.testing.assert_array_equal(loaded(xs[n]), m(xs[n]))
    log = _load_log(loaded)
    assert sum("no lowering" in line for line in log) == 2, log  # the batch of 7 was never compiled before


# -- lowering again, re-JIT --------------------------------------------------------------------------------------
def test_a_cpu_lacking_a_feature_re_jits_from_the_plan(saved, monkeypatch):
    from graphc.backends.llvm import artifacts

    m, path, x = saved
    monkeypatch.setattr(artifacts, "host_features", lambda: ["sse2"])
    here = artifacts.native_host()  # the CPU's flags too: the saving host's shared libraries do not fit either
    monkeypatch.setattr(artifacts, "native_host", lambda: {**here, "cpu_flags": ["sse2"]})
    loaded = graphc.load(path)
    log = _load_log(loaded)
    assert any("lacks" in line and "re-JIT" in line for line in log), log
    np.testing.assert_array_equal(loaded(x), m(x))


def test_another_plan_lowers_again_and_takes_the_code_only_when_it_matches(saved, monkeypatch):
    from graphc.backends.llvm import executable

    m, path, x = saved
    _edit_json(path, "backend/llvm/index.json", lambda d: d.update(plan_sha256="0" * 64))
    loaded = graphc.load(path)
    log = _load_log(loaded)
    assert any("not the one the stored layout was made for" in line for line in log), log
    assert any("lowered again to take it" in line for line in log), log
    np.testing.assert_array_equal(loaded(x), m(x))
    monkeypatch.setattr(executable, "ir_digest", lambda program: "0" * 64)
    loaded = graphc.load(path)
    assert any("does not match" in line for line in _load_log(loaded))
    np.testing.assert_array_equal(loaded(x), m(x))


def test_code_made_for_another_thread_count_is_re_jitted(saved):
    m, path, x = saved

    def edit(doc):
        doc["specializations"][0]["threads"] += 3
    _edit_json(path, "backend/llvm/index.json", edit)
    loaded = graphc.load(path)
    log = _load_log(loaded)
    assert any("generated for" in line and "re-JIT" in line for line in log), log
    np.testing.assert_array_equal(loaded(x), m(x))


def test_artifacts_without_a_layout_still_load_their_code(saved):
    """Index format 1 (before layouts were kept): the plan is lowered and the code taken when it matches."""
    m, path, x = saved
    parts = _parts(path)
    index = json.loads(parts["backend/llvm/index.json"])
    for spec in index["specializations"]:
        for key in ("layout", "constants", "threads"):
            spec.pop(key)
    index["format"] = 1
    del index["plan_sha256"]
    parts["backend/llvm/index.json"] = json.dumps(index).encode()
    manifest = json.loads(parts["manifest.json"])
    for name in ("backend/llvm/spec0.layout.json", "backend/llvm/spec0.const"):
        del parts[name], manifest["parts"][name]
    manifest["parts"]["backend/llvm/index.json"] = {
        "sha256": hashlib.sha256(parts["backend/llvm/index.json"]).hexdigest(),
        "size": len(parts["backend/llvm/index.json"])}
    parts["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in parts.items():
            zf.writestr(n, data)
    loaded = graphc.load(path)
    assert any("lowered again to take it" in line for line in _load_log(loaded)), _load_log(loaded)
    np.testing.assert_array_equal(loaded(x), m(x))


# -- corruption --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("part", ["index.json", "spec0.o", "spec0.layout.json", "spec0.const", "spec0.ll"])
def test_a_corrupted_backend_part_is_an_artifact_error(saved, part):
    _, path, _ = saved
    _rewrite(path, f"backend/llvm/{part}", lambda d: d[:-1] + bytes([d[-1] ^ 1]) if d else b"x")
    with pytest.raises(ArtifactError, match=f"spec0|index.*SHA-256|{part}"):
        graphc.load(path)


def test_a_truncated_constants_part_is_an_artifact_error(saved):
    _, path, _ = saved
    _rewrite(path, "backend/llvm/spec0.const", lambda d: d[:len(d) // 2])
    with pytest.raises(ArtifactError, match="spec0.const"):
        graphc.load(path)


def test_any_layout_edit_loads_identically_or_raises_artifact_error(rich, tmp_path):
    """Junk in place of any node of the (re-hashed) layout: the load refuses it (ArtifactError), or notices and
    lowers again, and the outputs stay identical. (Plausible but wrong numbers -- a smaller arena -- cannot be
    told from right ones without lowering: the SHA-256 of every part is what guards against those.)"""
    m, path = rich
    original = json.loads(_parts(path)["backend/llvm/spec0.layout.json"])
    junk = [None, -1, "x", [], {}, [None], True, 2 ** 70]
    paths = [p for p in json_paths(original) if p]
    rng = np.random.default_rng(0)
    chosen = [paths[i] for i in rng.choice(len(paths), size=min(60, len(paths)), replace=False)]
    target = tmp_path / "fuzz.gcx"
    outcomes = {"stored": 0, "lowered": 0, "refused": 0}
    feeds = _rich_feeds(2)
    want = m.run(feeds)
    for where in chosen:
        value = junk[int(rng.integers(len(junk)))]
        doc = json.loads(json.dumps(original))
        holder = doc
        for key in where[:-1]:
            holder = holder[key]
        holder[where[-1]] = value
        target.write_bytes(open(path, "rb").read())
        _rewrite(target, "backend/llvm/spec0.layout.json", lambda d: json.dumps(doc).encode(), rehash=True)
        try:
            loaded = graphc.load(target)
        except ArtifactError:
            outcomes["refused"] += 1
            continue
        outcomes["stored" if any("no lowering" in line for line in _load_log(loaded)) else "lowered"] += 1
        got = loaded.run(feeds)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{where} = {value!r}")
    assert outcomes["lowered"] > 0, outcomes


def test_a_fresh_process_loads_without_the_code_generators(rich):
    """What a load imports is what it costs: neither the lowering (program.py) nor the code generators."""
    import subprocess
    import sys

    m, path = rich
    code = ("import sys, graphc\n"
            f"m = graphc.load({str(path)!r})\n"
            "print(sorted(n for n in sys.modules if n.startswith(('graphc.backends.llvm.program', "
            "'graphc.backends.llvm.kernels', 'graphc.passes', 'onnxruntime'))))\n"
            "print(any('no lowering' in line for line in m.executable.describe()['load']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stdout


def test_a_split_fused_body_keeps_its_aliases(tmp_path, monkeypatch):
    """Sin and Cos have no code generator: the fused body is split, and its fallbacks read the body's input
    and write its output through aliases, which the layout keeps."""
    from graphc.backends.llvm import program as program_mod

    nodes = [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Add", ["s", "x"], ["a"]),
             helper.make_node("Cos", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "split", [_vi("x", [4, 16])], [_vi("y", [4, 16])])
    m = graphc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), target="llvm",
                       threads=2)
    assert [n.op_type for n in m.graph.nodes] == ["FusedKernel"]
    path = m.save(tmp_path / "split.gcx")
    assert len(json.loads(_parts(path)["backend/llvm/spec0.layout.json"])["aliases"]) == 2
    monkeypatch.setattr(program_mod.Program, "__post_init__", lambda self: pytest.fail("lowered"))
    loaded = graphc.load(path)
    x = np.random.default_rng(0).uniform(-0.4, 0.4, (4, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), m(x))
