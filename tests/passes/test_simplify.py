"""The simplification passes: constant_folding, cse, noop_elimination, batchnorm_folding.

Each rule and each refusal on a small ONNX model (imported, so the types are what the frontend infers),
numerical equality with the unsimplified graph through the reference backend, and the zoo end to end.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc import zoo
from graphc.frontend import import_onnx
from graphc.passes import PassContext, PassManager

SIMPLIFY = ["constant_folding", "noop_elimination", "batchnorm_folding", "cse", "dce"]
F = TensorProto.FLOAT


# -- helpers -----------------------------------------------------------------------------------------------
def make(nodes, inputs, outputs, inits=(), opset=17, name="m"):
    """An ONNX model; inputs/outputs are (name, elem_type, shape) triples; inits numpy arrays by name."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(inits).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def simplify(model, passes, **options):
    """Import ``model`` and run ``passes`` (verifier on); returns (graph, ctx)."""
    graph = import_onnx(model)
    ctx = PassContext(properties={"shapes_inferred"}, options=options, verify=True)
    PassManager(passes, verify=True).run(graph, ctx)
    return graph, ctx


def ops(graph) -> Counter:
    return Counter(n.op_type for n in graph.nodes)


def run_both(model, passes, feeds):
    """Outputs with ``passes`` and with DCE only; they must be numerically equal."""
    ours = graphc.compile(model, target="reference", passes=passes)
    base = graphc.compile(model, target="reference", passes=["dce"])
    a, b = ours.run(feeds), base.run(feeds)
    assert list(a) == list(b) == ours.output_names == base.output_names
    for k in b:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(b[k]).max())))
    return ours


def messages(ctx, pass_name):
    return [d for d in ctx.decisions if d.pass_name == pass_name]


rng = np.random.default_rng(0)


# -- constant folding --------------------------------------------------------------------------------------
def test_folds_constant_of_shape_chain_and_logs():
    fill = helper.make_tensor("v", F, [1], [0.5])
    m = make([helper.make_node("ConstantOfShape", ["shape"], ["w"], value=fill, name="cos"),
              helper.make_node("Mul", ["w", "two"], ["w2"], name="mul"),
              helper.make_node("Add", ["x", "w2"], ["y"], name="add")],
             [("x", F, [2, 3])], [("y", F, [2, 3])],
             {"shape": np.array([2, 3], np.int64), "two": np.array(2.0, np.float32)})
    g, ctx = simplify(m, ["constant_folding"])
    assert ops(g) == {"Add": 1}
    w2 = g.nodes[0].inputs[1]
    assert w2.name == "w2" and w2.is_constant and np.array_equal(w2.const, np.full((2, 3), 1.0, np.float32))
    assert set(g.initializers) == {"w2"}  # the intermediates and the now unused inputs are gone
    (d,) = messages(ctx, "constant_folding")
    assert d.data["by_op"] == {"ConstantOfShape": 1, "Mul": 1} and d.data["bytes"] == 2 * 24
    run_both(m, ["constant_folding"], {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_folded_graph_output_keeps_its_name():
    m = make([helper.make_node("Add", ["a", "b"], ["y"])], [("x", F, [2])], [("y", F, [2]), ("x2", F, [2])],
             {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)})
    m.graph.node.append(helper.make_node("Identity", ["x"], ["x2"]))
    g, _ = simplify(m, ["constant_folding"])
    assert [v.name for v in g.outputs] == ["y", "x2"] and g.outputs[0].is_constant
    compiled = run_both(m, ["constant_folding"], {"x": np.ones(2, np.float32)})
    assert compiled.output_names == ["y", "x2"]


def test_non_deterministic_ops_are_not_folded():
    m = make([helper.make_node("RandomNormal", [], ["r"], shape=[2, 3], name="rand"),
              helper.make_node("RandomUniformLike", ["c"], ["u"], name="rand_like"),
              helper.make_node("Add", ["r", "u"], ["y"])],
             [], [("y", F, [2, 3])], {"c": np.zeros((2, 3), np.float32)})
    g, ctx = simplify(m, ["constant_folding"])
    assert ops(g) == {"RandomNormal": 1, "RandomUniformLike": 1, "Add": 1}
    reasons = {d.data["node"]: d.data["reason"] for d in messages(ctx, "constant_folding")}
    assert reasons == {"rand": "non-deterministic op", "rand_like": "non-deterministic op"}


def test_dropout_in_training_mode_is_not_folded():
    m = make([helper.make_node("Dropout", ["c", "ratio", "train"], ["y"], seed=1)], [], [("y", F, [64])],
             {"c": np.ones(64, np.float32), "ratio": np.array(0.5, np.float32), "train": np.array(True)})
    g, _ = simplify(m, ["constant_folding", "noop_elimination"])
    assert ops(g) == {"Dropout": 1}


def test_size_cap_is_respected():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["w"], name="big"),
             helper.make_node("Add", ["x", "w"], ["y"])]
    m = make(nodes, [("x", F, [512, 1024])], [("y", F, [512, 1024])], {"shape": np.array([512, 1024], np.int64)})
    g, ctx = simplify(m, ["constant_folding"], fold_limit_bytes=1 << 20)  # 2 MiB result, 1 MiB cap
    assert ops(g)["ConstantOfShape"] == 1
    (d,) = messages(ctx, "constant_folding")
    assert d.data["reason"] == "result larger than fold_limit_bytes" and d.data["bytes"] == 512 * 1024 * 4
    g, _ = simplify(m, ["constant_folding"])  # the default cap (256 MiB) lets it through
    assert "ConstantOfShape" not in ops(g)


def test_folds_shape_and_size_of_static_shapes_only():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Shape", ["x"], ["s_tail"], start=1),
             helper.make_node("Size", ["x"], ["n"]),
             helper.make_node("Shape", ["d"], ["sd"]),
             helper.make_node("Shape", ["d"], ["sd_tail"], start=1)]
    m = make(nodes, [("x", F, [2, 3, 4]), ("d", F, ["N", 5])],
             [("s", TensorProto.INT64, [3]), ("s_tail", TensorProto.INT64, [2]), ("n", TensorProto.INT64, []),
              ("sd", TensorProto.INT64, [2]), ("sd_tail", TensorProto.INT64, [1])])
    g, _ = simplify(m, ["constant_folding"])
    assert ops(g) == {"Shape": 1}  # Shape of [N, 5] stays; its tail [5] is static
    consts = {v.name: v.const.tolist() for v in g.outputs if v.is_constant}
    assert consts == {"s": [2, 3, 4], "s_tail": [3, 4], "n": 24, "sd_tail": [5]}
    run_both(m, ["constant_folding"], {"x": np.zeros((2, 3, 4), np.float32), "d": np.zeros((7, 5), np.float32)})


def test_failed_evaluation_is_kept_and_logged():
    from graphc.ir import Graph, TensorType

    # built by hand: the importer's own shape inference would reject the bad Reshape
    g = Graph("bad")
    x = g.add_input("x", TensorType(np.float32, (4,)))
    c = g.add_initializer("c", np.ones(6, np.float32))
    s = g.add_initializer("shape", np.array([4], np.int64))
    r = g.add_node("Reshape", [c, s], name="bad").outputs[0]
    g.outputs = [g.add_node("Add", [x, r]).outputs[0]]
    ctx = PassContext(properties={"shapes_inferred"}, verify=True)
    result = PassManager(["constant_folding"], verify=True).run(g, ctx)
    assert not result.changed and ops(g) == {"Reshape": 1, "Add": 1}
    (d,) = messages(ctx, "constant_folding")
    assert d.data["node"] == "bad" and d.data["reason"].startswith("evaluation failed")


def test_folds_inside_subgraphs_but_keeps_the_if():
    then_g = helper.make_graph([helper.make_node("Add", ["c", "c"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, [2])])
    m = make([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
             [("cond", TensorProto.BOOL, []), ("x", F, [2])], [("y", F, [2])], {"c": np.array([1, 2], np.float32)})
    g, _ = simplify(m, ["constant_folding"])
    (if_node,) = g.nodes
    body = if_node.attrs["then_branch"]
    assert body.nodes == [] and body.outputs[0].is_constant and body.outputs[0].const.tolist() == [2, 4]
    for cond in (True, False):
        run_both(m, ["constant_folding", "dce"], {"cond": np.array(cond), "x": np.array([3, 4], np.float32)})


def test_no_change_returns_false():
    m = make([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    graph = import_onnx(m)
    result = PassManager(["constant_folding", "noop_elimination", "cse", "batchnorm_folding"], verify=True).run(
        graph, PassContext(properties={"shapes_inferred"}))
    assert not result.changed


# -- CSE ---------------------------------------------------------------------------------------------------
def test_cse_merges_same_op_same_inputs_and_default_attrs():
    nodes = [helper.make_node("LeakyRelu", ["x"], ["a"]),
             helper.make_node("LeakyRelu", ["x"], ["b"], alpha=0.01),  # the default, spelled out
             helper.make_node("LeakyRelu", ["x"], ["c"], alpha=0.2),   # different
             helper.make_node("Add", ["a", "b"], ["ab"]),
             helper.make_node("Add", ["a", "a"], ["aa"]),              # same as ab once b is a
             helper.make_node("Sum", ["ab", "aa", "c"], ["y"])]
    m = make(nodes, [("x", F, [4])], [("y", F, [4])])
    g, ctx = simplify(m, ["cse"])
    assert ops(g) == {"LeakyRelu": 2, "Add": 1, "Sum": 1}
    (d,) = messages(ctx, "cse")
    assert d.data["by_op"] == {"Add": 1, "LeakyRelu": 1}
    run_both(m, ["cse"], {"x": rng.standard_normal(4).astype(np.float32)})


def test_cse_compares_array_attributes_by_value_and_dtype():
    def cos(out, value):
        return helper.make_node("ConstantOfShape", ["s"], [out], value=numpy_helper.from_array(value))
    nodes = [cos("a", np.array([1.5], np.float32)), cos("b", np.array([1.5], np.float32)),
             cos("c", np.array([1.5], np.float64)),
             helper.make_node("Add", ["a", "b"], ["ab"]), helper.make_node("Cast", ["c"], ["c32"], to=F),
             helper.make_node("Add", ["ab", "c32"], ["y"])]
    m = make(nodes, [("s", TensorProto.INT64, [2])], [("y", F, ["H", "W"])])
    g, _ = simplify(m, ["cse"])
    assert ops(g)["ConstantOfShape"] == 2


def test_cse_never_merges_random_ops_and_keeps_graph_outputs():
    nodes = [helper.make_node("RandomUniformLike", ["x"], ["r1"]), helper.make_node("RandomUniformLike", ["x"], ["r2"]),
             helper.make_node("Neg", ["x"], ["y1"]), helper.make_node("Neg", ["x"], ["y2"])]
    m = make(nodes + [helper.make_node("Add", ["r1", "r2"], ["s"])], [("x", F, [3])],
             [("s", F, [3]), ("y1", F, [3]), ("y2", F, [3])])
    g, ctx = simplify(m, ["cse"])
    assert ops(g) == {"RandomUniformLike": 2, "Neg": 2, "Add": 1}
    assert [v.name for v in g.outputs] == ["s", "y1", "y2"] and not messages(ctx, "cse")


def test_cse_merges_identical_weights_only():
    w = rng.standard_normal((3, 3)).astype(np.float32)
    inits = {"w1": w, "w2": w.copy(), "w3": w + 1, "z_f": np.zeros(4, np.float32), "z_i": np.zeros(4, np.int32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("MatMul", ["x", "w3"], ["c"]), helper.make_node("Sum", ["a", "b", "c"], ["y"]),
             helper.make_node("Cast", ["z_i"], ["zc"], to=F), helper.make_node("Add", ["z_f", "zc"], ["z"])]
    m = make(nodes, [("x", F, [2, 3])], [("y", F, [2, 3]), ("z", F, [4])], inits)
    g, ctx = simplify(m, ["cse"])
    assert sorted(g.initializers) == ["w1", "w3", "z_f", "z_i"]  # same bytes, other dtype: kept apart
    assert ops(g) == {"MatMul": 2, "Sum": 1, "Cast": 1, "Add": 1}  # the two MatMuls on one weight merged
    weights = messages(ctx, "cse")[0]
    assert weights.data == {"weights": ["w2"], "bytes_saved": 36}
    run_both(m, ["cse"], {"x": rng.standard_normal((2, 3)).astype(np.float32)})


# -- no-op elimination -------------------------------------------------------------------------------------
def test_identity_and_noop_shape_ops_are_removed():
    nodes = [helper.make_node("Identity", ["x"], ["i"]),
             helper.make_node("Reshape", ["i", "same"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),         # changes the shape: kept
             helper.make_node("Squeeze", ["u", "ax"], ["q"]),           # back to x's shape, but not a no-op alone
             helper.make_node("Cast", ["q"], ["c"], to=F),              # same dtype
             helper.make_node("Cast", ["c"], ["d"], to=TensorProto.DOUBLE),
             helper.make_node("Expand", ["d", "same"], ["e"]),
             helper.make_node("Flatten", ["e"], ["f"], axis=1),
             helper.make_node("Relu", ["f"], ["y"])]
    m = make(nodes, [("x", F, [2, 3])], [("y", TensorProto.DOUBLE, [2, 3])],
             {"same": np.array([2, 3], np.int64), "ax": np.array([0], np.int64)})
    g, ctx = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Unsqueeze": 1, "Squeeze": 1, "Cast": 1, "Relu": 1}
    assert g.nodes[0].inputs[0] is g.inputs[0]
    (d,) = messages(ctx, "noop_elimination")
    assert d.data["by_rule"] == {"identity": 1, "noop_cast": 1, "noop_expand": 1, "noop_flatten": 1,
                                 "noop_reshape": 1}
    run_both(m, ["noop_elimination"], {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_graph_output_names_survive_noop_removal():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
             helper.make_node("Identity", ["x"], ["x_out"])]  # input -> output: nothing can take the name
    m = make(nodes, [("x", F, [2])], [("y", F, [2]), ("x_out", F, [2])])
    g, _ = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Relu": 1, "Identity": 1}
    assert [v.name for v in g.outputs] == ["y", "x_out"] and g.outputs[0].producer.op_type == "Relu"
    run_both(m, ["noop_elimination"], {"x": np.array([-1, 2], np.float32)})


def test_dropout_removal_and_mask_constant():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Dropout", ["r"], ["d1"]),
             helper.make_node("Dropout", ["d1", "ratio"], ["d2", "mask"]),  # d2: a graph output
             helper.make_node("Not", ["mask"], ["dropped"])]
    m = make(nodes, [("x", F, [2, 3])], [("d2", F, [2, 3]), ("dropped", TensorProto.BOOL, [2, 3])],
             {"ratio": np.array(0.3, np.float32)})
    g, _ = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Relu": 1, "Not": 1}
    assert [v.name for v in g.outputs] == ["d2", "dropped"] and g.outputs[0].producer.op_type == "Relu"
    mask = g.nodes[1].inputs[0]
    assert mask.is_constant and mask.const.dtype == np.bool_ and mask.const.all() and mask.const.shape == (2, 3)
    run_both(m, ["noop_elimination"], {"x": rng.standard_normal((2, 3)).astype(np.float32)})


def test_dropout_kept_when_mask_shape_unknown_or_training():
    m = make([helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], [("x", F, ["N", 3])],
             [("y", F, ["N", 3]), ("mask", TensorProto.BOOL, ["N", 3])])
    g, ctx = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Dropout": 1} and "not static" in messages(ctx, "noop_elimination")[0].message
    m = make([helper.make_node("Dropout", ["x", "r", "t"], ["d"]), helper.make_node("Relu", ["d"], ["y"])],
             [("x", F, [3]), ("t", TensorProto.BOOL, [])], [("y", F, [3])], {"r": np.array(0.5, np.float32)})
    g, _ = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Dropout": 1, "Relu": 1}


def test_transpose_identity_cancel_and_compose():
    nodes = [helper.make_node("Transpose", ["x"], ["t0"], perm=[0, 1, 2, 3]),
             helper.make_node("Transpose", ["t0"], ["t1"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),   # cancels t1
             helper.make_node("Relu", ["t2"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t3"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["t3"], ["t4"], perm=[1, 0, 2, 3]),   # composes with t3
             helper.make_node("Transpose", ["t4"], ["y"])]                       # default perm: reverse
    m = make(nodes, [("x", F, [2, 3, 4, 5])], [("y", F, [3, 5, 2, 4])])
    g, ctx = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Relu": 1, "Transpose": 1}
    (t,) = [n for n in g.nodes if n.op_type == "Transpose"]
    assert t.inputs[0].producer.op_type == "Relu" and t.outputs[0].name == "y"
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    assert np.array_equal(run_both(m, ["noop_elimination"], {"x": x}).run({"x": x})["y"],
                          np.transpose(np.transpose(x, (0, 2, 3, 1)), (1, 0, 2, 3)).transpose())


def test_square_transpose_is_not_a_noop():
    m = make([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [("x", F, [3, 3])], [("y", F, [3, 3])])
    g, _ = simplify(m, ["noop_elimination"])
    assert ops(g) == {"Transpose": 1}


def test_reshape_chains_collapse_unless_shape_copies_dims():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=2),
             helper.make_node("Reshape", ["f", "s1"], ["r1"]),
             helper.make_node("Reshape", ["r1", "s2"], ["y"]),
             helper.make_node("Reshape", ["x", "s1"], ["k1"]),
             helper.make_node("Reshape", ["k1", "zero"], ["z"])]   # 0 copies a dim of k1: not collapsed
    m = make(nodes, [("x", F, [2, 3, 4])], [("y", F, [4, 6]), ("z", F, [6, 2, 2])],
             {"s1": np.array([6, 4], np.int64), "s2": np.array([4, -1], np.int64), "zero": np.array([0, 2, -1], np.int64)})
    g, _ = simplify(m, ["noop_elimination"])
    (y_node,) = [n for n in g.nodes if n.outputs[0].name == "y"]
    assert y_node.inputs[0] is g.inputs[0]
    (z_node,) = [n for n in g.nodes if n.outputs[0].name == "z"]
    assert z_node.inputs[0].producer.op_type == "Reshape"
    assert ops(g) == {"Reshape": 3}
    run_both(m, ["noop_elimination"], {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


# -- BatchNorm folding -------------------------------------------------------------------------------------
def _bn_inits(prefix, c):
    return {f"{prefix}_s": rng.uniform(0.5, 2, c).astype(np.float32), f"{prefix}_b": rng.standard_normal(c).astype(np.float32),
            f"{prefix}_m": rng.standard_normal(c).astype(np.float32), f"{prefix}_v": rng.uniform(0.5, 2, c).astype(np.float32)}


def _bn(x, y, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y],
                            name=prefix, **attrs)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_bn_folds_into_conv(bias, group):
    inits = {"w": rng.standard_normal((4, 4 // group, 3, 3)).astype(np.float32), **_bn_inits("bn", 4)}
    if bias:
        inits["b"] = rng.standard_normal(4).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], group=group, pads=[1, 1, 1, 1])
    m = make([conv, _bn("c", "y", epsilon=1e-3)], [("x", F, [1, 4, 5, 5])], [("y", F, [1, 4, 5, 5])], inits)
    compiled = run_both(m, ["batchnorm_folding", "dce"], {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)})
    assert compiled.report()["ops"] == {"Conv": 1} and compiled.output_names == ["y"]
    folds = [d for d in compiled.report()["passes"] if d["pass"] == "batchnorm_folding"]
    assert len(folds) == 1 and folds[0]["message"].startswith("folded 'bn' into Conv")


@pytest.mark.parametrize("group", [1, 2])
def test_bn_folds_into_conv_transpose(group):
    inits = {"w": rng.standard_normal((4, 6 // group, 2, 2)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32),
             **_bn_inits("bn", 6)}
    conv = helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], group=group, strides=[2, 2])
    m = make([conv, _bn("c", "y")], [("x", F, [1, 4, 3, 3])], [("y", F, [1, 6, 6, 6])], inits)
    compiled = run_both(m, ["batchnorm_folding", "dce"], {"x": rng.standard_normal((1, 4, 3, 3)).astype(np.float32)})
    assert compiled.report()["ops"] == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (2, 5)])
def test_bn_folds_into_gemm(trans_b, c_shape):
    inits = {"B": rng.standard_normal((5, 3) if trans_b else (3, 5)).astype(np.float32), **_bn_inits("bn", 5)}
    inputs = ["a", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        inputs.append("C")
    gemm = helper.make_node("Gemm", inputs, ["g"], transB=trans_b, alpha=0.5, beta=1.5)
    m = make([gemm, _bn("g", "y")], [("a", F, [2, 3])], [("y", F, [2, 5])], inits)
    compiled = run_both(m, ["batchnorm_folding", "dce"], {"a": rng.standard_normal((2, 3)).astype(np.float32)})
    assert compiled.report()["ops"] == {"Gemm": 1}


def test_bn_refusals():
    inits = {"w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32), **_bn_inits("bn", 2), **_bn_inits("bn2", 2)}
    shared = make([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "y"),
                   helper.make_node("Relu", ["c"], ["z"])],
                  [("x", F, [1, 2, 2, 2])], [("y", F, [1, 2, 2, 2]), ("z", F, [1, 2, 2, 2])], inits)
    g, ctx = simplify(shared, ["batchnorm_folding"])
    assert ops(g)["BatchNormalization"] == 1
    assert "other readers" in messages(ctx, "batchnorm_folding")[0].data["reason"]
    runtime_w = make([helper.make_node("Conv", ["x", "wx"], ["c"]), _bn("c", "y")],
                     [("x", F, [1, 2, 2, 2]), ("wx", F, [2, 2, 1, 1])], [("y", F, [1, 2, 2, 2])], _bn_inits("bn", 2))
    g, ctx = simplify(runtime_w, ["batchnorm_folding"])
    assert ops(g)["BatchNormalization"] == 1 and "not a constant" in messages(ctx, "batchnorm_folding")[0].data["reason"]
    training = make([helper.make_node("Conv", ["x", "w"], ["c"]),
                     helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["y", "rm", "rv"],
                                      training_mode=1)],
                    [("x", F, [1, 2, 2, 2])], [("y", F, [1, 2, 2, 2]), ("rm", F, [2]), ("rv", F, [2])], inits)
    g, _ = simplify(training, ["batchnorm_folding"])
    assert ops(g)["BatchNormalization"] == 1
    after_relu = make([helper.make_node("Relu", ["x"], ["r"]), _bn("r", "y")], [("x", F, [1, 2, 2, 2])],
                      [("y", F, [1, 2, 2, 2])], _bn_inits("bn", 2))
    g, ctx = simplify(after_relu, ["batchnorm_folding"])
    assert ops(g)["BatchNormalization"] == 1 and not messages(ctx, "batchnorm_folding")


# -- end to end --------------------------------------------------------------------------------------------
def _with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """Also return the input of the final Softmax: softmax outputs saturate and would hide differences."""
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if softmax:  # Softmax keeps its input's type: reuse the declared type of its output
        (out,) = [o for o in model.graph.output if o.name == softmax[-1].output[0]]
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(out)
        vi.name = softmax[-1].input[0]
        model.graph.output.append(vi)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_models_unchanged_by_simplification(name):
    model = _with_logits(zoo.load(name, weights="random", seed=0))
    feeds = zoo.sample_inputs(model, seed=1)
    compiled = run_both(model, SIMPLIFY, feeds)
    report = compiled.report()
    assert report["kernels"] <= report["nodes"]
    assert "Dropout" not in report["ops"] and "Identity" not in report["ops"]


@pytest.mark.slow
def test_resnet50_constant_weights_fold_completely():
    compiled = graphc.compile("zoo:resnet50", target="reference",
                              passes=["constant_folding", "batchnorm_folding", "dce"])
    found = compiled.report()["ops"]
    assert "ConstantOfShape" not in found and "BatchNormalization" not in found
    assert found["Conv"] == 53
