"""The fusion pass: each rule and each refusal on hand-built graphs, equal outputs through the reference
executor, the FusedKernel op, the report/inspect view, and the zoo models fused vs unfused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc import zoo
from graphc.backends.reference.executor import _Program
from graphc.frontend import import_onnx
from graphc.ir import TensorType
from graphc.ir.verify import verify
from graphc.ops import lookup, OpContext
from graphc.passes import PassContext, PassManager

F32 = np.float32


# -- helpers ---------------------------------------------------------------------------------------------------

def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)  # fills in the outputs' types


def fuse(model, **options):
    """Import, run dce + fusion (verified), return (graph, ctx)."""
    graph = import_onnx(model, None)
    ctx = PassContext(target="reference", properties={"shapes_inferred"}, options=options, verify=True)
    PassManager(["dce", "fusion"], verify=True).run(graph, ctx)
    return graph, ctx


def kernels(graph):
    return [n for n in graph.nodes if n.op_type == "FusedKernel"]


def members(kernel):
    return [n.op_type for n in kernel.attrs["body"].nodes]


def boundary_reasons(ctx):
    return {d.data["value"]: d.data["reason"] for d in ctx.decisions_of("fusion") if d.data.get("boundary")}


def summary(ctx):
    return next(d.data for d in ctx.decisions_of("fusion") if d.data.get("summary"))


def run_graph(graph, feeds):
    return _Program(graph).run([feeds[v.name] for v in graph.inputs])


def assert_same_as_unfused(model, feeds, rtol=1e-6, **options):
    """Outputs with passes=["dce"] vs ["dce", "fusion"] through the reference executor (pass options, which
    graphc.compile does not take yet, go through a PassManager run of the same pipeline)."""
    plain = graphc.compile(model, target="reference", passes=["dce"]).run(feeds)
    if options:
        graph, _ = fuse(model, **options)
        assert any(n.op_type == "FusedKernel" for n in graph.nodes)
        fused = dict(zip([v.name for v in graph.outputs], run_graph(graph, feeds)))
    else:
        fused = graphc.compile(model, target="reference", passes=["dce", "fusion"]).run(feeds)
    assert plain.keys() == fused.keys()
    for k in plain:
        np.testing.assert_allclose(fused[k], plain[k], rtol=rtol, atol=1e-6)


rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(F32)


# -- elementwise chains ----------------------------------------------------------------------------------------

def test_elementwise_chain_becomes_one_kernel_and_computes_the_same():
    model = make_model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                        helper.make_node("Neg", ["a"], ["b"], name="neg"),
                        helper.make_node("Exp", ["b"], ["c"], name="exp"),
                        helper.make_node("Add", ["c", "y"], ["out"], name="add")],
                       [("x", [2, 3]), ("y", [2, 3])], ["out"])
    graph, ctx = fuse(model)
    assert [n.op_type for n in graph.nodes] == ["FusedKernel"]
    (k,) = kernels(graph)
    assert members(k) == ["Relu", "Neg", "Exp", "Add"]
    assert k.attrs["kind"] == "elementwise" and "elementwise-chain" in k.attrs["rule"]
    assert [v.name for v in graph.outputs] == ["out"] and k.outputs[0].name == "out"
    assert all(n.meta["fusion_group"] == k.name for n in k.attrs["body"].nodes)
    x, y = rand(2, 3), rand(2, 3)
    (out,) = run_graph(graph, {"x": x, "y": y})
    np.testing.assert_allclose(out, np.exp(-np.maximum(x, 0)) + y, rtol=1e-6)
    s = summary(ctx)
    assert s["nodes_before"] == 4 and s["kernels_after"] == 1
    # 3 intermediates of 24 bytes no longer written and read, and 2 inputs + 1 output moved once
    assert s["bytes_before"] == 4 * 48 + 24 and s["bytes_after"] == 72
    (group,) = [d.data for d in ctx.decisions_of("fusion") if d.data.get("group")]
    assert group["bytes_saved"] == s["bytes_before"] - s["bytes_after"] and group["intermediates"] == 3


def test_diamond_inside_one_group_is_fused_after_retry():
    # a feeds two elementwise ops that meet again: refused at first (multi-consumer), accepted once both are in
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
                        helper.make_node("Exp", ["a"], ["c"]), helper.make_node("Add", ["b", "c"], ["out"])],
                       [("x", [4, 5])], ["out"])
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1 and sorted(members(graph.nodes[0])) == ["Add", "Exp", "Neg", "Relu"]
    assert boundary_reasons(ctx) == {}
    x = rand(4, 5)
    np.testing.assert_allclose(run_graph(graph, {"x": x})[0], -np.maximum(x, 0) + np.exp(np.maximum(x, 0)), rtol=1e-6)


def test_multi_consumer_value_is_a_boundary():
    model = make_model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                        helper.make_node("Neg", ["a"], ["b"], name="neg"),
                        helper.make_node("Exp", ["a"], ["c"], name="exp")],
                       [("x", [2, 3])], ["b", "c"])
    graph, ctx = fuse(model)
    assert kernels(graph) == []  # Relu's output is read by two kernels: it must be written
    assert boundary_reasons(ctx) == {"a": "multi_consumer"}
    why = next(d for d in ctx.decisions_of("fusion") if d.data.get("value") == "a")
    assert "also read by" in why.message


def test_graph_output_is_a_boundary():
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"])],
                       [("x", [2, 3])], ["a", "b"])
    graph, ctx = fuse(model)
    assert kernels(graph) == [] and boundary_reasons(ctx) == {"a": "graph_output"}


def test_diamond_through_an_unfusable_node_would_create_a_cycle():
    # Split -> s0 -> Add and Split -> s1 -> TopK (opaque) -> Add: Split+Add would leave and re-enter the group
    model = make_model([helper.make_node("Split", ["x"], ["s0", "s1"], axis=1, num_outputs=2, name="split"),
                        helper.make_node("TopK", ["s1", "k"], ["t", "ti"], axis=1, name="topk"),
                        helper.make_node("Add", ["s0", "t"], ["out"], name="add")],
                       [("x", [2, 6])], ["out"], [("k", np.array([3], np.int64))], opset=18)
    graph, ctx = fuse(model)
    assert kernels(graph) == []
    reasons = boundary_reasons(ctx)
    assert reasons["s0"] == "cycle" and reasons["s1"] == "opaque" and reasons["t"] == "opaque"
    assert_same_as_unfused(model, {"x": rand(2, 6)})


def test_arity_cap_splits_a_wide_kernel():
    names = [f"x{i}" for i in range(10)]
    nodes, prev = [], "x0"
    for i in range(1, 10):
        nodes.append(helper.make_node("Add", [prev, names[i]], [f"s{i}"]))
        prev = f"s{i}"
    model = make_model(nodes, [(n, [3]) for n in names], [prev])
    graph, ctx = fuse(model)  # default fusion_max_inputs=8
    assert len(graph.nodes) == 2 and all(len(k.inputs) <= 8 for k in kernels(graph))
    assert "arity_cap" in boundary_reasons(ctx).values()
    graph, ctx = fuse(model, fusion_max_inputs=4)
    assert all(len(n.inputs) <= 4 for n in graph.nodes) and len(graph.nodes) == 3
    graph, ctx = fuse(model, fusion_max_inputs=16)
    assert len(graph.nodes) == 1 and len(graph.nodes[0].inputs) == 10
    feeds = {n: rand(3) for n in names}
    assert_same_as_unfused(model, feeds, fusion_max_inputs=4)


# -- complex ops and their epilogues ---------------------------------------------------------------------------

def conv_model(second_conv=False):
    w = rand(4, 3, 3, 3) * 0.3
    b = rand(4)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Unsqueeze", ["bias", "axes"], ["bu"], name="unsq"),
             helper.make_node("Add", ["c", "bu"], ["c1"], name="bias_add"),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "y"], ["s"], name="residual"),
             helper.make_node("Clip", ["s", "lo", "hi"], ["out"], name="clip")]
    inits = [("w", w), ("b", b), ("bias", rand(4, 1, 1)), ("axes", np.array([0], np.int64)),
             ("lo", np.array(0.0, F32)), ("hi", np.array(6.0, F32))]
    if second_conv:
        nodes.append(helper.make_node("Conv", ["out", "w2"], ["out2"], pads=[1, 1, 1, 1], name="conv2"))
        inits.append(("w2", rand(4, 4, 3, 3) * 0.3))
    return make_model(nodes, [("x", [1, 3, 6, 6]), ("y", [1, 4, 6, 6])], ["out2" if second_conv else "out"], inits)


def test_conv_takes_bias_relu_residual_clip_epilogue():
    model = conv_model()
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1
    (k,) = kernels(graph)
    assert k.attrs["kind"] == "complex+epilogue" and "complex+epilogue" in k.attrs["rule"]
    assert sorted(members(k)) == sorted(["Conv", "Unsqueeze", "Add", "Relu", "Add", "Clip"])
    # inputs: x, w, b, bias, axes, y, lo, hi (the residual operand y comes from outside)
    assert len(k.inputs) == 8 and any(v.name == "y" for v in k.inputs)
    assert_same_as_unfused(model, {"x": rand(1, 3, 6, 6), "y": rand(1, 4, 6, 6)})


def test_conv_conv_is_not_fused():
    model = conv_model(second_conv=True)
    graph, ctx = fuse(model)
    ops = [n.op_type for n in graph.nodes]
    assert ops == ["FusedKernel", "Conv"]
    assert members(graph.nodes[0]).count("Conv") == 1
    assert boundary_reasons(ctx) == {"out": "complex_complex"}
    assert_same_as_unfused(model, {"x": rand(1, 3, 6, 6), "y": rand(1, 4, 6, 6)})


def test_residual_add_joins_only_one_of_two_convs():
    w1, w2 = rand(4, 3, 1, 1), rand(4, 3, 1, 1)
    model = make_model([helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["x", "w2"], ["b"]),
                        helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["out"])],
                       [("x", [1, 3, 4, 4])], ["out"], [("w1", w1), ("w2", w2)])
    graph, ctx = fuse(model)
    assert sorted(n.op_type for n in graph.nodes) == ["Conv", "FusedKernel"]
    assert sorted(members(kernels(graph)[0])) == ["Add", "Conv", "Relu"]
    assert "complex_complex" in boundary_reasons(ctx).values()
    assert_same_as_unfused(model, {"x": rand(1, 3, 4, 4)})


def test_complex_op_takes_no_prologue_and_no_reduction_epilogue():
    model = make_model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["m"]),
                        helper.make_node("Softmax", ["m"], ["out"], axis=-1)],
                       [("x", [2, 4])], ["out"], [("w", rand(4, 5))])
    graph, ctx = fuse(model)
    assert kernels(graph) == []
    assert boundary_reasons(ctx) == {"a": "complex_prologue", "m": "complex_reduction"}


def test_matmul_bias_gelu_is_one_kernel():
    # the erf form of GELU reads x twice (Div and Mul): fused once both readers are in the group
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["h"]),
                        helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                        helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["g"]),
                        helper.make_node("Mul", ["g", "half"], ["out"])],
                       [("x", [3, 4])], ["out"],
                       [("w", rand(4, 6)), ("b", rand(6)), ("sqrt2", np.array(np.sqrt(2), F32)),
                        ("one", np.array(1, F32)), ("half", np.array(0.5, F32))])
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1 and graph.nodes[0].attrs["kind"] == "complex+epilogue"
    assert_same_as_unfused(model, {"x": rand(3, 4)})


# -- reductions ------------------------------------------------------------------------------------------------

def test_decomposed_softmax_is_one_row_kernel():
    model = make_model([helper.make_node("ReduceMax", ["x"], ["m"], axes=[-1], keepdims=1),
                        helper.make_node("Sub", ["x", "m"], ["d"]), helper.make_node("Exp", ["d"], ["e"]),
                        helper.make_node("ReduceSum", ["e", "ax"], ["s"], keepdims=1),
                        helper.make_node("Div", ["e", "s"], ["out"])],
                       [("x", [3, 7])], ["out"], [("ax", np.array([-1], np.int64))], opset=13)
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1
    k = graph.nodes[0]
    assert k.attrs["kind"] == "reduction" and "row-reduction" in k.attrs["rule"]
    x = rand(3, 7)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(run_graph(graph, {"x": x})[0], e / e.sum(-1, keepdims=True), rtol=1e-6)


def layernorm_nodes(axes_attr=(-1,), second_axes=(-1,)):
    return [helper.make_node("ReduceMean", ["x"], ["mu"], axes=list(axes_attr)),
            helper.make_node("Sub", ["x", "mu"], ["d"]), helper.make_node("Pow", ["d", "two"], ["d2"]),
            helper.make_node("ReduceMean", ["d2"], ["var"], axes=list(second_axes)),
            helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
            helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["ng"]),
            helper.make_node("Add", ["ng", "beta"], ["out"])]


LN_INITS = [("two", np.array(2, F32)), ("eps", np.array(1e-5, F32)), ("g", rand(8)), ("beta", rand(8))]


def test_decomposed_layernorm_is_one_kernel():
    model = make_model(layernorm_nodes(), [("x", [4, 8])], ["out"], LN_INITS, opset=13)
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1 and graph.nodes[0].attrs["kind"] == "reduction"
    assert_same_as_unfused(model, {"x": rand(4, 8)})


def test_reductions_over_different_axes_do_not_share_a_kernel():
    model = make_model(layernorm_nodes(second_axes=(0, 1)), [("x", [4, 8])], ["out"], LN_INITS, opset=13)
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 2
    assert "reduction_mismatch" in boundary_reasons(ctx).values()
    assert_same_as_unfused(model, {"x": rand(4, 8)})


def test_reduction_takes_injective_producers_and_elementwise_consumers():
    model = make_model([helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
                        helper.make_node("ReduceSum", ["t", "ax"], ["s"], keepdims=0),
                        helper.make_node("Sqrt", ["s"], ["out"])],
                       [("x", [3, 5])], ["out"], [("ax", np.array([1], np.int64))], opset=13)
    graph, ctx = fuse(model)
    assert len(graph.nodes) == 1 and members(graph.nodes[0]) == ["Transpose", "ReduceSum", "Sqrt"]
    rules = graph.nodes[0].attrs["rule"]
    assert "reduction+prologue" in rules and "reduction+epilogue" in rules
    assert_same_as_unfused(model, {"x": np.abs(rand(3, 5))})


def test_windowed_pool_does_not_recompute_an_expensive_producer():
    model = make_model([helper.make_node("Exp", ["x"], ["e"]),
                        helper.make_node("MaxPool", ["e"], ["out"], kernel_shape=[3, 3], strides=[1, 1])],
                       [("x", [1, 2, 6, 6])], ["out"])
    graph, ctx = fuse(model)
    assert kernels(graph) == [] and boundary_reasons(ctx) == {"e": "recompute"}
    # a pure data-movement producer may join while the re-read factor stays under fusion_max_reread
    model = make_model([helper.make_node("Transpose", ["x"], ["e"], perm=[0, 1, 3, 2]),
                        helper.make_node("MaxPool", ["e"], ["out"], kernel_shape=[3, 3], strides=[2, 2])],
                       [("x", [1, 2, 7, 7])], ["out"])
    graph, _ = fuse(model)
    assert len(kernels(graph)) == 1
    graph, ctx = fuse(model, fusion_max_reread=2)
    assert kernels(graph) == [] and boundary_reasons(ctx) == {"e": "reread"}


def test_broadcast_of_a_computed_small_tensor_is_not_recomputed_per_element():
    model = make_model([helper.make_node("Exp", ["v"], ["ev"]), helper.make_node("Add", ["x", "ev"], ["out"])],
                       [("x", [16, 8]), ("v", [8])], ["out"])
    graph, ctx = fuse(model)
    assert kernels(graph) == [] and boundary_reasons(ctx) == {"ev": "recompute"}


# -- subgraphs, opaque ops, modes, idempotence -----------------------------------------------------------------

def test_nodes_inside_subgraphs_are_left_alone():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t1"]), helper.make_node("Neg", ["t1"], ["t2"])],
                               "then", [], [helper.make_tensor_value_info("t2", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Exp", ["x"], ["e1"]), helper.make_node("Neg", ["e1"], ["e2"])],
                               "else", [], [helper.make_tensor_value_info("e2", TensorProto.FLOAT, [2])])
    model = make_model([helper.make_node("Abs", ["x0"], ["x"]),
                        helper.make_node("If", ["c"], ["out"], then_branch=then_g, else_branch=else_g)],
                       [("x0", [2])], ["out"])
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    graph, ctx = fuse(model)
    assert [n.op_type for n in graph.nodes] == ["Abs", "If"]
    assert summary(ctx)["subgraph_nodes_left_alone"] == 4
    assert boundary_reasons(ctx) == {"x": "opaque"}
    for c in (True, False):
        assert_same_as_unfused(model, {"x0": rand(2), "c": np.array(c)})


def test_annotate_mode_marks_groups_without_rewriting():
    model = conv_model(second_conv=True)
    graph, ctx = fuse(model, fusion_mode="annotate")
    assert "FusedKernel" not in [n.op_type for n in graph.nodes]
    groups = {n.meta.get("fusion_group") for n in graph.nodes}
    assert len(groups - {None}) == 1 and graph.nodes[-1].meta.get("fusion_group") is None
    assert summary(ctx)["kernels_after"] == 2


def test_second_run_changes_nothing():
    model = conv_model(second_conv=True)
    graph, ctx = fuse(model)
    before = [n.op_type for n in graph.nodes]
    result = PassManager(["fusion"], verify=True).run(graph, ctx)
    assert not result.changed and [n.op_type for n in graph.nodes] == before


def test_bad_options_are_option_errors():
    model = conv_model()
    for options in ({"fusion_max_inputs": 0}, {"fusion_mode": "nope"}, {"fusion_max_reread": 0.5}):
        with pytest.raises(graphc.GraphcError):
            fuse(model, **options)


# -- the FusedKernel op ------------------------------------------------------------------------------------------

def test_fused_kernel_op_types_cost_and_verify():
    model = conv_model()
    graph, _ = fuse(model)
    verify(graph)  # domain "graphc" is known to the registry, the body is a proper subgraph
    (k,) = kernels(graph)
    opdef = lookup("graphc", "FusedKernel")
    ctx = OpContext(k, opdef)
    assert opdef.infer(ctx) == [v.type for v in k.attrs["body"].outputs]
    assert k.outputs[0].type == TensorType(np.dtype(F32), (1, 4, 6, 6))
    cost = opdef.cost(ctx)
    body_flops = 0
    for n in k.attrs["body"].nodes:
        d = lookup(n.domain, n.op_type)
        body_flops += d.cost(OpContext(n, d)).flops
    assert cost.flops == body_flops > 0
    assert cost.bytes_read == sum(v.type.nbytes() for v in k.inputs)
    assert cost.bytes_written == 4 * 4 * 36


# -- report and inspect ------------------------------------------------------------------------------------------

def test_report_and_inspect_show_the_kernels():
    from graphc.cli import model_tables

    compiled = graphc.compile(conv_model(second_conv=True), target="reference", passes=["dce", "fusion"])
    report = compiled.report()
    assert report["nodes"] == 7 and report["kernels"] == 2
    decisions = [d for d in report["passes"] if d["pass"] == "fusion"]
    assert any(d["data"].get("summary") for d in decisions) and any(d["data"].get("boundary") for d in decisions)
    tables = {t.title: t for t in model_tables(compiled)}
    assert "Fusion groups" in tables
    (row,) = tables["Fusion groups"].rows
    assert row[1] == "6" and "Conv" in row[2]


# -- real models -------------------------------------------------------------------------------------------------

def test_resnet50_kernel_count_is_a_third_of_its_nodes():
    graph, ctx = fuse(zoo.load("resnet50", weights="random", seed=0))
    s = summary(ctx)
    assert s["nodes_before"] == 176 and s["kernels_after"] * 3 <= s["nodes_before"]
    assert s["bytes_after"] < s["bytes_before"]
    # every remaining boundary has a logged reason
    boundaries = [d for d in ctx.decisions_of("fusion") if d.data.get("boundary")]
    assert boundaries and all(d.data["reason"] != "not_tried" for d in boundaries)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.MODELS)
def test_zoo_model_fused_matches_unfused(name):
    model = zoo.load(name, weights="random", seed=0)
    feeds = zoo.sample_inputs(model, seed=1)
    plain = graphc.compile(model, target="reference", passes=["dce"])
    fused = graphc.compile(model, target="reference", passes=["dce", "fusion"])
    assert fused.report()["kernels"] < plain.report()["kernels"]
    expected, got = plain.run(feeds), fused.run(feeds)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7)


def test_inference_dropout_with_unread_mask_joins_a_gemm_epilogue():
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
                        helper.make_node("Relu", ["g"], ["r"]),
                        helper.make_node("Dropout", ["r"], ["d", "mask"], ratio=0.5),
                        helper.make_node("Gemm", ["d", "w2", "b2"], ["out"], transB=1)],
                       [("x", [2, 4])], ["out"],
                       [("w", rand(5, 4)), ("b", rand(5)), ("w2", rand(3, 5)), ("b2", rand(3))], opset=9)
    graph, ctx = fuse(model)
    assert [n.op_type for n in graph.nodes] == ["FusedKernel", "Gemm"]
    assert members(graph.nodes[0]) == ["Gemm", "Relu", "Dropout"]
    assert_same_as_unfused(model, {"x": rand(2, 4)})


def test_symbolic_batch_dims_survive_fusion():
    from tests.helpers import mlp_model, mlp_reference

    model = mlp_model(batch="N")
    graph, ctx = fuse(model)
    (k,) = kernels(graph)  # MatMul + Add + Relu; the second MatMul and the Softmax stay apart
    assert members(k) == ["MatMul", "Add", "Relu"]
    assert k.outputs[0].type.shape == ("N", 5) and k.attrs["body"].inputs[0].type.shape == ("N", 4)
    assert boundary_reasons(ctx) == {"h2": "complex_complex", "logits": "complex_reduction"}
    x = rand(3, 4)
    np.testing.assert_allclose(run_graph(graph, {"x": x})[0], mlp_reference(model, x), rtol=1e-5)
