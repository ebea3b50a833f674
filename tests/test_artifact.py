"""Artifacts (.gcx, format 2): plan + raw weights, loaded without recompiling; every corruption is an ArtifactError."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc import artifact
from graphc.errors import ArtifactError
from graphc.ir.graph import Graph
from graphc.ir.serialize import graph_from_json, graph_to_json
from graphc.ir.types import SequenceType, TensorType
from graphc.ir.verify import verify
from graphc.options import CompileOptions
from graphc.plan import Plan
from tests.helpers import artifact_parts as _parts
from tests.helpers import json_paths, mlp_model, mlp_reference
from tests.helpers import rewrite_artifact_part as _rewrite
from tests.helpers import write_artifact_parts as _write


@pytest.fixture(scope="module")
def mlp():
    return mlp_model()


@pytest.fixture
def mlp_artifact(mlp, tmp_path):
    path = tmp_path / "mlp.gcx"
    graphc.compile(mlp, target="reference").save(path)
    return path


def _edit_json(path, name, edit):
    def mutate(data):
        doc = json.loads(data)
        doc = edit(doc) or doc
        return json.dumps(doc).encode()
    _rewrite(path, name, mutate, rehash=name != "manifest.json")


def _assert_same(a, b, feeds):
    out_a, out_b = a.run(feeds), b.run(feeds)
    assert list(out_a) == list(out_b)
    for name in out_a:
        np.testing.assert_array_equal(out_a[name], out_b[name], err_msg=name)


# -- round trips ---------------------------------------------------------------------------------------------
def test_save_load_round_trip(mlp, tmp_path):
    model = graphc.compile(mlp, target="reference")
    path = model.save(tmp_path / "mlp.gcx")
    assert set(_parts(path)) == {"manifest.json", "plan.json", "weights.bin", "model.onnx"}
    again = graphc.load(path)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(again(x), model(x))
    np.testing.assert_allclose(again(x), mlp_reference(mlp, x), rtol=1e-5)
    assert again.target == "reference"
    assert again.input_types == model.input_types and again.output_names == model.output_names
    assert again.report()["kernels"] == model.report()["kernels"]
    assert again.report()["nodes"] == model.report()["nodes"]
    verify(again.graph)


def test_manifest_contents(mlp_artifact):
    parts = _parts(mlp_artifact)
    manifest = json.loads(parts["manifest.json"])
    assert manifest["format"] == "graphc-artifact" and manifest["format_version"] == 2
    assert manifest["graphc_version"] == graphc.__version__
    assert manifest["target"] == "reference" and manifest["inputs"] == {"x": "float32[N,4]"}
    assert manifest["host"]["machine"] and isinstance(manifest["host"]["cpu_features"], list)
    assert manifest["required_cpu_features"] == []
    for name in ("plan.json", "weights.bin", "model.onnx"):
        meta = manifest["parts"][name]
        assert meta["size"] == len(parts[name])
        assert meta["sha256"] == hashlib.sha256(parts[name]).hexdigest()
    plan = json.loads(parts["plan.json"])
    assert set(plan) >= {"graph", "weights", "decisions", "pipeline", "target", "options"}
    for entry in plan["weights"].values():
        assert entry["offset"] % 64 == 0 and entry["offset"] + entry["nbytes"] <= len(parts["weights.bin"])
    assert b"pickle" not in parts["plan.json"]


def _mapped(array) -> bool:
    import mmap

    while isinstance(array, np.ndarray):
        array = array.base
    return isinstance(array.obj if isinstance(array, memoryview) else array, mmap.mmap)


def test_weights_are_aligned_in_the_file_and_mapped_on_load(mlp, mlp_artifact):
    with zipfile.ZipFile(mlp_artifact) as zf:
        info = zf.getinfo("weights.bin")
    assert artifact._stored_offset(str(mlp_artifact), info) % 64 == 0
    loaded = graphc.load(mlp_artifact)
    weights = [v.const for v in loaded.graph.initializers.values()]
    assert weights and all(_mapped(w) and w.ctypes.data % 64 == 0 for w in weights)
    name, first = next(iter(loaded.graph.initializers.items()))
    before = first.const.copy()
    first.const[...] = 7  # the mapping is private: writes never reach the file
    np.testing.assert_array_equal(graphc.load(mlp_artifact).graph.initializers[name].const, before)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_parts_that_cannot_be_mapped_are_copied(mlp, mlp_artifact, compression):
    """Another zip writer (unaligned, or compressed members): the load copies into aligned buffers instead."""
    parts = _parts(mlp_artifact)
    with zipfile.ZipFile(mlp_artifact, "w", compression=compression) as zf:
        zf.writestr("pad", b"x")  # puts weights.bin at an odd offset
        for n, data in parts.items():
            zf.writestr(n, data)
    loaded = graphc.load(mlp_artifact)
    weights = [v.const for v in loaded.graph.initializers.values()]
    assert weights and not any(_mapped(w) for w in weights) and all(w.ctypes.data % 64 == 0 for w in weights)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded(x), mlp_reference(mlp, x), rtol=1e-5)


def test_load_does_not_import_or_run_passes(mlp, mlp_artifact, monkeypatch):
    from graphc import pipeline
    from graphc.frontend import onnx_import
    from graphc.passes import manager

    def boom(*args, **kwargs):
        raise AssertionError("loading an artifact must not import or compile")

    for module, name in [(onnx_import, "import_onnx"), (onnx_import, "_parse"), (pipeline, "import_onnx"),
                         (pipeline, "compile_proto"), (pipeline, "compile_model")]:
        monkeypatch.setattr(module, name, boom)
    monkeypatch.setattr(manager.PassManager, "run", boom)
    monkeypatch.setattr(manager.PassManager, "__init__", boom)
    loaded = graphc.load(mlp_artifact)
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(loaded(x), mlp_reference(mlp, x), rtol=1e-5)


def test_save_again_after_load_keeps_the_source_model(mlp, mlp_artifact, tmp_path):
    loaded = graphc.load(mlp_artifact)
    path = loaded.save(tmp_path / "again.gcx")
    assert _parts(path)["model.onnx"] == _parts(mlp_artifact)["model.onnx"]
    assert loaded.source_model.graph.name == mlp.graph.name  # parsed on demand
    again = graphc.load(path)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(again(x), loaded(x))


def test_model_onnx_is_optional_on_load(mlp_artifact, tmp_path):
    parts = _parts(mlp_artifact)
    del parts["model.onnx"]
    manifest = json.loads(parts["manifest.json"])
    del manifest["parts"]["model.onnx"]
    parts["manifest.json"] = json.dumps(manifest).encode()
    _write(mlp_artifact, parts)
    loaded = graphc.load(mlp_artifact)
    assert loaded.source_model is None
    x = np.ones((2, 4), np.float32)
    out = loaded(x)
    path = loaded.save(tmp_path / "no_source.gcx")  # still saves: plan and weights are enough
    assert "model.onnx" not in _parts(path)
    np.testing.assert_array_equal(graphc.load(path)(x), out)


def test_v1_artifacts_still_load_by_recompiling(mlp, tmp_path):
    path = tmp_path / "v1.gcx"
    model_bytes = mlp.SerializeToString()
    manifest = {"format": "graphc-artifact", "format_version": 1, "graphc_version": "0.0.1", "source": "mlp",
                "target": "reference", "options": {"target": "reference"},
                "parts": {"model.onnx": {"sha256": hashlib.sha256(model_bytes).hexdigest(),
                                         "size": len(model_bytes)}}}
    _write(path, {"manifest.json": json.dumps(manifest).encode(), "model.onnx": model_bytes})
    loaded = graphc.load(path)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(loaded(x), mlp_reference(mlp, x), rtol=1e-5)


def _control_flow_model() -> onnx.ModelProto:
    """If and Loop bodies that read outer-scope values (x, w, and a value computed before them)."""
    w = numpy_helper.from_array(np.array([1.5, -2.0, 0.25], np.float32), "w")
    f = TensorProto.FLOAT
    then_g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", f, [3])])
    else_g = helper.make_graph([helper.make_node("Mul", ["xw", "w"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", f, [3])])
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "w"], ["v_add"]),
         helper.make_node("Mul", ["v_add", "xw"], ["v_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Relu", ["v_out"], ["scan_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f, [3])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f, [3]),
         helper.make_tensor_value_info("scan_out", f, [3])])
    trips = numpy_helper.from_array(np.array(3, np.int64), "trips")
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["xw"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trips", "", "branch"], ["final", "scans"], body=body),
        helper.make_node("Tanh", ["final"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "control",
        [helper.make_tensor_value_info("x", f, [3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, [3]), helper.make_tensor_value_info("scans", f, [3, 3])],
        [w, trips])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_control_flow_round_trip(tmp_path):
    model = graphc.compile(_control_flow_model(), target="reference")
    loaded = graphc.load(model.save(tmp_path / "cf.gcx"))
    verify(loaded.graph)
    assert [n.op_type for n in loaded.graph.nodes] == [n.op_type for n in model.graph.nodes]
    x = np.array([0.5, -1.0, 2.0], np.float32)
    for cond in (True, False):
        _assert_same(model, loaded, {"x": x, "cond": np.array(cond)})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_zoo_round_trip_with_fused_kernels(name, tmp_path):
    from graphc import zoo

    start = time.perf_counter()
    model = graphc.compile(zoo.load(name, weights="random", seed=0), target="reference")
    compile_s = time.perf_counter() - start
    path = model.save(tmp_path / f"{name}.gcx")
    start = time.perf_counter()
    loaded = graphc.load(path)
    load_s = time.perf_counter() - start
    print(f"\n{name}: compile {compile_s:.3f} s, load {load_s:.3f} s ({100 * load_s / compile_s:.1f} %), "
          f"artifact {path and (tmp_path / f'{name}.gcx').stat().st_size / 1e6:.1f} MB")
    kernels = [n for n in loaded.graph.nodes if n.op_type == "FusedKernel"]
    assert kernels and len(kernels) == sum(n.op_type == "FusedKernel" for n in model.graph.nodes)
    assert loaded.report()["kernels"] == model.report()["kernels"]
    shape = [d if isinstance(d, int) else 1 for d in model.graph.inputs[0].type.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    _assert_same(model, loaded, {model.input_names[0]: x})
    if name == "resnet50":
        assert load_s < 0.5 * compile_s, (load_s, compile_s)  # about 1-5 % when the machine is quiet


def _hand_built_plan() -> Plan:
    g = Graph("lowp", opsets={"": 21})
    x = g.add_input("x", TensorType(np.float32, (2, 3)))
    bf = g.add_initializer("bf", (np.arange(6).reshape(2, 3) / 4).astype(ml_dtypes.bfloat16))
    i4 = g.add_initializer("i4", np.array([[-8, -1, 0], [1, 5, 7]], dtype=ml_dtypes.int4))
    f8 = g.add_initializer("f8", np.array([0.5, -1.5, 3.0], dtype=ml_dtypes.float8_e4m3fn))
    s = g.add_initializer("s", np.array(["a", "bé"], dtype=object))
    a = g.add_node("Cast", [bf], attrs={"to": TensorProto.FLOAT}).outputs[0]
    b = g.add_node("Cast", [i4], attrs={"to": TensorProto.FLOAT}).outputs[0]
    c = g.add_node("Cast", [f8], attrs={"to": TensorProto.FLOAT}).outputs[0]
    y = g.add_node("Add", [x, a]).outputs[0]
    y = g.add_node("Add", [y, b]).outputs[0]
    y = g.add_node("Add", [y, c], output_names=["y"]).outputs[0]
    s_out = g.add_node("Identity", [s], output_names=["s_out"]).outputs[0]
    g.outputs = [y, s_out]
    verify(g)
    return Plan(graph=g, target="reference", options={"target": "reference"})


def test_low_precision_and_string_weights_round_trip(tmp_path):
    from graphc.backends import get_backend

    plan = _hand_built_plan()
    doc, weights = graph_to_json(plan.graph)
    json.dumps(doc)  # plain JSON
    assert {w.dtype.name for w in weights.values()} == {"bfloat16", "int4", "float8_e4m3fn", "object"}
    rebuilt = graph_from_json(json.loads(json.dumps(doc)), weights)
    verify(rebuilt)

    opts = CompileOptions.build(target="reference")
    compiled = artifact.compiled_from_plan(plan, get_backend("reference").compile(plan), source_model=None,
                                           source="hand-built", options=opts, imported_nodes=7, compile_seconds=0.0)
    loaded = graphc.load(compiled.save(tmp_path / "lowp.gcx"))
    for name, value in plan.graph.initializers.items():
        got = loaded.graph.initializers[name].const
        assert got.dtype == value.const.dtype and got.shape == value.const.shape, name
        if got.dtype == object:
            assert got.tolist() == value.const.tolist()
        else:
            assert got.tobytes() == value.const.tobytes(), name
            assert got.ctypes.data % 64 == 0
    _assert_same(compiled, loaded, {"x": np.ones((2, 3), np.float32)})


def test_types_round_trip():
    g = Graph("types")
    x = g.add_input("x", TensorType(ml_dtypes.bfloat16, ("N", None, 3)))
    q = g.add_input("q", SequenceType(TensorType(np.int64, None)))
    g.add_input("u", TensorType(None, None))
    g.outputs = [x, q]
    doc, _ = graph_to_json(g)
    back = graph_from_json(json.loads(json.dumps(doc)), {})
    assert [v.type for v in back.inputs] == [v.type for v in g.inputs]
    assert [v.name for v in back.outputs] == ["x", "q"]


# -- corruption ---------------------------------------------------------------------------------------------
def _flip_last(d: bytes) -> bytes:
    return d[:-1] + bytes([d[-1] ^ 1])


def _flip_middle(d: bytes) -> bytes:
    i = len(d) // 2
    return d[:i] + bytes([d[i] ^ 0x40]) + d[i + 1:]


def _first_weight(doc):
    return doc["weights"][sorted(doc["weights"])[0]]


def _first_node(doc):
    return doc["graph"]["nodes"][0]


def _set(getter, key, value):
    def edit(doc):
        getter(doc)[key] = value
    return edit


@pytest.mark.parametrize("mutate, message", [
    (lambda p: _rewrite(p, "model.onnx", lambda d: d[:10]), "bytes"),
    (lambda p: _rewrite(p, "manifest.json", lambda d: d.replace(b'"format_version": 2', b'"format_version": 99')),
     "format version"),
    (lambda p: _rewrite(p, "manifest.json", lambda d: d[:20]), "corrupted"),
    (lambda p: p.write_bytes(p.read_bytes()[:50]), "not a graphc artifact"),
    (lambda p: p.write_bytes(b"hello"), "not a graphc artifact"),
    (lambda p: _rewrite(p, "plan.json", _flip_middle), "plan.json.*SHA-256"),
    (lambda p: _rewrite(p, "weights.bin", _flip_middle), "weights.bin.*SHA-256"),
    (lambda p: _rewrite(p, "weights.bin", lambda d: d[:-4]), "weights.bin.*bytes"),
    (lambda p: _write(p, {k: v for k, v in _parts(p).items() if k != "weights.bin"}), "weights.bin.*missing"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_weight, "offset", 1 << 40)), "outside weights.bin"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_weight, "offset", -64)), "outside weights.bin"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_weight, "nbytes", 3)), "bytes do not hold"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_weight, "dtype", "float128")), "unknown dtype"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_weight, "dtype", "object")), "string data"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_node, "op", "FrobnicateOp")), "unknown to the registry"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_node, "inputs", ["nowhere"])), "dangling value name"),
    (lambda p: _edit_json(p, "plan.json", _set(lambda d: d["graph"], "outputs", ["nowhere"])), "'nowhere'"),
    (lambda p: _edit_json(p, "plan.json", _set(_first_node, "attrs", {"axis": {"$w": "w999"}})), "unknown weight"),
    (lambda p: _edit_json(p, "plan.json", _set(lambda d: d, "graph", "nonsense")), "must be an object"),
    (lambda p: _edit_json(p, "plan.json", lambda d: [1, 2]), "not an object"),
    (lambda p: _edit_json(p, "plan.json", _set(lambda d: d, "target", "cuda")), "disagrees"),
    (lambda p: _rewrite(p, "plan.json", lambda d: b"{not json", rehash=True), "not valid JSON"),
    (lambda p: _edit_json(p, "manifest.json", _set(lambda d: d, "graphc_version", "0.0.0-other")), "graphc"),
    (lambda p: _edit_json(p, "manifest.json", _set(lambda d: d, "required_cpu_features", ["no_such_feature"])),
     "CPU feature"),
    (lambda p: _edit_json(p, "manifest.json", _set(lambda d: d, "options", {"target": "reference", "bogus": 1})),
     "options"),
])
def test_corrupted_artifacts_raise_artifact_error(mlp_artifact, mutate, message):
    mutate(mlp_artifact)
    with pytest.raises(ArtifactError, match=message):
        graphc.load(mlp_artifact)


def test_tampered_source_model_is_caught_when_it_is_used(mlp_artifact, tmp_path):
    """Running never reads the kept model.onnx (that keeps loading fast); saving again does, and checks it."""
    _rewrite(mlp_artifact, "model.onnx", _flip_last)
    loaded = graphc.load(mlp_artifact)
    loaded(np.ones((2, 4), np.float32))
    with pytest.raises(ArtifactError, match="model.onnx.*SHA-256"):
        loaded.save(tmp_path / "again.gcx")


def test_any_plan_edit_loads_or_raises_artifact_error(mlp_artifact, tmp_path):
    """Replace every node of plan.json's tree by junk of several kinds: load works or says ArtifactError."""
    original = json.loads(_parts(mlp_artifact)["plan.json"])
    junk = [None, -1, 2 ** 70, 1.5, "x", [], {}, [None], {"$w": "w0"}, {"$g": {}}, True]
    paths = [p for p in json_paths(original) if p and p[0] in ("graph", "weights")]
    rng = np.random.default_rng(0)
    chosen = [paths[i] for i in rng.choice(len(paths), size=min(120, len(paths)), replace=False)]
    target = tmp_path / "fuzz.gcx"
    outcomes = {"loaded": 0, "refused": 0}
    for path in chosen:
        for value in junk[:: 1 + int(rng.integers(3))]:
            doc = json.loads(json.dumps(original))
            holder = doc
            for key in path[:-1]:
                holder = holder[key]
            holder[path[-1]] = value
            target.write_bytes(mlp_artifact.read_bytes())
            _rewrite(target, "plan.json", lambda d: json.dumps(doc).encode(), rehash=True)
            try:
                graphc.load(target)
                outcomes["loaded"] += 1
            except ArtifactError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0


_CASE_PATTERN = (r"test_(if|loop|scan|optional|sequence_map|string|regex|cast_|castlike_|dequantizelinear|"
                 r"quantizelinear|constant|affine_grid|range_float_type_positive_delta_expanded)")


def _node_cases():
    import re

    from onnx.backend.test.case.node import collect_testcases

    return sorted((c for c in collect_testcases(None) if re.match(_CASE_PATTERN, c.name) and c.data_sets),
                  key=lambda c: c.name)


@pytest.mark.parametrize("case", _node_cases(), ids=lambda c: c.name)
def test_onnx_node_cases_round_trip_through_json(case):
    """Subgraphs, optionals, sequences, strings and low-precision dtypes of ONNX's node tests: rebuilt from JSON,
    the graph verifies and computes what the compiled one does."""
    from graphc.backends import get_backend
    from graphc.errors import GraphcError

    try:
        compiled = graphc.compile(case.model, target="reference")
    except GraphcError:
        pytest.skip("not supported by graphc")
    doc, weights = graph_to_json(compiled.graph)
    rebuilt = graph_from_json(json.loads(json.dumps(doc)), weights)
    verify(rebuilt)
    inputs = list(case.data_sets[0][0])
    if len(inputs) != len(compiled.input_names):
        return
    try:
        expected = compiled.executable.run(inputs)
    except GraphcError:
        return
    got = get_backend("reference").compile(Plan(graph=rebuilt, target="reference", options=compiled.plan.options,
                                                decisions=compiled.plan.decisions)).run(inputs)
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        if isinstance(a, np.ndarray) and a.dtype != object:
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:
            assert str(a) == str(b)
