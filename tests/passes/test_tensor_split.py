"""Tensor splitting (passes/tensor_split.py): slices compute what the whole kernel did, refusals name their
reason, and the pass splits when memory or balance needs it (with the split model run on worker processes)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc.backends import get_backend
from graphc.errors import DeviceError
from graphc.ir import Graph, TensorType
from graphc.ir.graph import Node
from graphc.ir.verify import verify
from graphc.passes.partitioning import sink_sources
from graphc.passes.tensor_split import clone, split_kernel, split_spec, try_split_spec
from graphc.plan import Plan


def _model(nodes, inputs, outputs, weights, opset=17):
    graph = helper.make_graph(nodes, "m", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _run(graph, feeds):
    return get_backend("reference").compile(Plan(graph, "reference")).run(feeds)


def _kernel(graph, op_type):
    """The top-level kernel holding ``op_type`` (itself, or a FusedKernel around it)."""
    for n in graph.nodes:
        if n.op_type == op_type or n.op_type == "FusedKernel" and any(m.op_type == op_type
                                                                        for m in n.attrs["body"].nodes):
            return n
    raise AssertionError(f"no {op_type} kernel")


def _split_and_compare(model, op_type, k, feeds, **options):
    whole = graphc.compile(model, target="reference", **options).graph
    split = clone(whole)
    node = _kernel(split, op_type)
    name = node.name
    new = split_kernel(split, split_spec(node), k, "test")
    verify(split)
    assert name not in {n.name for n in split.nodes}
    slices = [n for n in new if n.meta["tensor_split"].get("slice") is not None]
    assert len(slices) == k and {n.meta["tensor_split"]["of"] for n in new} == {name}
    assert [n.op_type for n in new if n.meta["tensor_split"].get("concat")] == ["Concat"] * len(node.outputs)
    want, got = _run(whole, feeds), _run(split, feeds)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    return split


@pytest.mark.parametrize("epilogue", ["bias_relu", "add_const_relu", "clip", "none"])
@pytest.mark.parametrize("k", [2, 3])
def test_conv_slices_compute_the_whole_conv(epilogue, k):
    rng = np.random.default_rng(0)
    w = {"W": _f32(rng, 8, 4, 3, 3)}
    conv_in = ["x", "W"]
    if epilogue == "bias_relu":
        w["B"] = _f32(rng, 8)
        conv_in.append("B")
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1])]
    last = "c"
    if epilogue in ("bias_relu", "add_const_relu"):
        if epilogue == "add_const_relu":
            w["shift"] = _f32(rng, 1, 8, 1, 1)  # per channel: sliced with the conv
            w["scale"] = np.float32(0.5).reshape(())  # a scalar: shared by every slice
            nodes += [helper.make_node("Add", ["c", "shift"], ["a"]), helper.make_node("Mul", ["a", "scale"], ["c2"])]
            last = "c2"
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    elif epilogue == "clip":
        w["lo"], w["hi"] = np.float32(-0.5).reshape(()), np.float32(0.5).reshape(())
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:  # a plain Conv kernel: the pooling after it does not fuse into its epilogue
        nodes.append(helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2]))
    out = (1, 8, 5, 5) if epilogue == "none" else (1, 8, 10, 10)
    model = _model(nodes, [_vi("x", (1, 4, 10, 10))], [_vi("y", out)], w)
    x = _f32(rng, 1, 4, 10, 10)
    split = _split_and_compare(model, "Conv", k, [x])
    if epilogue == "add_const_relu":
        # the per-channel shift is sliced with the conv's channels, the scalar scale is shared whole
        for n in (n for n in split.nodes if "slice" in n.meta.get("tensor_split", {})):
            lo, hi = n.meta["tensor_split"]["range"]
            consts = [v for v in n.inputs if v.is_constant]
            assert sorted(v.const.shape for v in consts if v.const.ndim == 4) == [(1, hi - lo, 1, 1), (hi - lo, 4, 3, 3)]
            assert [v.name for v in consts if v.const.ndim == 0] == ["scale"]


@pytest.mark.parametrize("trans_b, bias_shape", [(0, (12,)), (1, (12,)), (0, (1, 12)), (1, ()), (0, None)])
def test_gemm_slices_compute_the_whole_gemm(trans_b, bias_shape):
    rng = np.random.default_rng(1)
    w = {"B": _f32(rng, *((12, 16) if trans_b else (16, 12)))}
    ins = ["x", "B"]
    if bias_shape is not None:
        w["C"] = _f32(rng, *bias_shape) if bias_shape else np.float32(0.25).reshape(())
        ins.append("C")
    nodes = [helper.make_node("Gemm", ins, ["g"], transB=trans_b, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["g"], ["y"])]
    model = _model(nodes, [_vi("x", (3, 16))], [_vi("y", (3, 12))], w)
    _split_and_compare(model, "Gemm", 5, [_f32(rng, 3, 16)])


def test_matmul_with_a_3d_input_splits_its_last_axis():
    rng = np.random.default_rng(2)
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [_vi("x", (2, 3, 16))], [_vi("y", (2, 3, 10))],
                   {"W": _f32(rng, 16, 10)})
    split = _split_and_compare(model, "MatMul", 4, [_f32(rng, 2, 3, 16)])
    assert sorted(n.outputs[0].type.shape[-1] for n in split.nodes if n.op_type == "MatMul") == [2, 2, 3, 3]


def test_a_weight_made_by_constant_of_shape_is_sliced_by_smaller_ones():
    rng = np.random.default_rng(3)
    shape = numpy_helper.from_array(np.array([24, 40], np.int64), "shape")
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["Wg"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.02])),
             helper.make_node("Gemm", ["x", "Wg"], ["y"])]
    graph = helper.make_graph(nodes, "m", [_vi("x", (2, 24))], [_vi("y", (2, 40))], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # the folder's size cap keeps the ConstantOfShape a kernel (as in the light zoo's FC layers)
    split = _split_and_compare(model, "Gemm", 4, [_f32(rng, 2, 24)], fold_limit_bytes=16)
    gens = [n for n in split.nodes if n.op_type == "ConstantOfShape"]
    assert len(gens) == 4 and sorted(tuple(n.outputs[0].type.shape) for n in gens) == [(24, 10)] * 4
    # each generator sits right before the slice reading it, so a stage cut can fall between slices
    order = [n.op_type for n in split.nodes]
    assert order == ["ConstantOfShape", "Gemm"] * 4 + ["Concat"]


def test_refusals_name_their_reason():
    rng = np.random.default_rng(4)
    grouped = _model([helper.make_node("Conv", ["x", "W"], ["y"], group=2)], [_vi("x", (1, 4, 6, 6))],
                     [_vi("y", (1, 8, 4, 4))], {"W": _f32(rng, 8, 2, 3, 3)})
    g = graphc.compile(grouped, target="reference").graph
    assert "grouped" in try_split_spec(_kernel(g, "Conv"))
    # an epilogue reading an activation that broadcasts (not shaped like the output) cannot be cut by channel
    broadcast = _model([helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                        helper.make_node("Add", ["c", "r"], ["y"])],
                       [_vi("x", (1, 4, 6, 6)), _vi("r", (1, 1, 6, 6))], [_vi("y", (1, 4, 6, 6))],
                       {"W": _f32(rng, 4, 4, 3, 3)})
    g = graphc.compile(broadcast, target="reference").graph
    assert "not shaped like" in try_split_spec(_kernel(g, "Conv"))
    activation_b = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", (2, 3)), _vi("w", (3, 4))],
                          [_vi("y", (2, 4))], {})
    g = graphc.compile(activation_b, target="reference").graph
    assert "not a constant" in try_split_spec(_kernel(g, "MatMul"))
    assert "not a Conv/Gemm/MatMul" in try_split_spec(Node("Relu"))


@pytest.mark.parametrize("target", ["reference", "llvm"])
def test_a_residual_epilogue_reads_its_channels_of_the_residual(target):
    # a ResNet block's last conv: Conv + residual Add + Relu in one kernel; each slice reads its channels of x
    rng = np.random.default_rng(5)
    model = _model([helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                   [_vi("x", (1, 8, 6, 6))], [_vi("y", (1, 8, 6, 6))],
                   {"W": _f32(rng, 8, 8, 3, 3), "B": _f32(rng, 8)})
    x = _f32(rng, 1, 8, 6, 6)
    split = _split_and_compare(model, "Conv", 3, [x])
    cuts = [n for n in split.nodes if n.op_type == "Slice"]
    assert [n.meta["tensor_split"]["range"] for n in cuts] == [[0, 2], [2, 5], [5, 8]]
    assert all(n.inputs[0].name == "x" for n in cuts)
    if target == "llvm":  # the rewritten graph runs as generated code (Slice kernels included) and agrees
        from graphc.ir.serialize import graph_to_json
        from graphc.runtime.partitioned import build_stage_executable

        doc, weights = graph_to_json(split)
        executable = build_stage_executable(doc, weights, "llvm", {"threads": 1})
        got = executable.run([x])[0]
        assert executable.fallback_ops == []
        np.testing.assert_allclose(got, graphc.compile(model, target="llvm")(x), rtol=1e-6, atol=1e-6)


def test_sink_sources_puts_a_generator_next_to_its_reader():
    g = Graph("g")
    x = g.add_input("x", TensorType(np.float32, (2, 3)))
    shape = g.add_initializer("shape", np.array([3, 3], np.int64))
    gen = g.add_node("ConstantOfShape", [shape], name="gen").outputs[0]
    a = g.add_node("Relu", [x], name="a").outputs[0]
    b = g.add_node("Neg", [a], name="b").outputs[0]
    y = g.add_node("MatMul", [b, gen], name="mm").outputs[0]
    g.outputs = [y]
    assert sink_sources(g)
    assert [n.name for n in g.nodes] == ["a", "b", "gen", "mm"]
    assert not sink_sources(g)


# ---------------------------------------------------------------------------------------------- the pass
def vgg_like(seed=0) -> onnx.ModelProto:
    """VGG's shape in small: convolutions, then an FC layer holding ~85% of the weights, then two small ones."""
    rng = np.random.default_rng(seed)
    w = {"c1": _f32(rng, 16, 3, 3, 3, scale=0.3), "c2": _f32(rng, 32, 16, 3, 3, scale=0.1),
         "f1": _f32(rng, 512, 32 * 8 * 8, scale=0.02), "b1": _f32(rng, 512),
         "f2": _f32(rng, 128, 512, scale=0.05), "f3": _f32(rng, 10, 128, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["h1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2"], ["h2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "f1", "b1"], ["g1"], transB=1), helper.make_node("Relu", ["g1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "f2"], ["g2"], transB=1), helper.make_node("Relu", ["g2"], ["a2"]),
             helper.make_node("Gemm", ["a2", "f3"], ["g3"], transB=1), helper.make_node("Softmax", ["g3"], ["y"])]
    return _model(nodes, [_vi("x", (1, 3, 16, 16))], [_vi("y", (1, 10))], w)


def _weights(model):
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_a_kernel_over_the_memory_cap_is_split_and_the_model_runs_on_worker_processes():
    model = vgg_like()
    cap = int(0.35 * _weights(model))  # the big FC layer alone is ~2.4x the cap
    x = _f32(np.random.default_rng(5), 1, 3, 16, 16)
    one = graphc.compile(model, target="reference")
    with pytest.raises(DeviceError, match="Tensor splitting was tried|memory|fit"):
        graphc.compile(model, target="reference", devices="cpu:0-3", partition_memory_bytes=cap,
                       partition_replicas=1, tensor_split=False)
    many = graphc.compile(model, target="reference", devices="cpu:0-3", partition_memory_bytes=cap,
                          partition_replicas=1)
    try:
        verify(many.graph)
        part = many.report()["partition"]
        split = part["tensor_split"]["split"]
        big = [r for r in split if r["reason"].startswith("capacity")]
        assert len(big) == 1 and big[0]["op"] == "Gemm" and big[0]["slices"] >= 3
        used = [d for d in part["devices"] if d["ops"]]
        assert len(used) >= 3 and all(d["peak_bytes"] <= d["capacity_bytes"] == cap for d in used)
        # the slices of the big layer really are on different devices
        devices = {n.meta["device"] for n in many.graph.nodes
                   if n.meta.get("tensor_split", {}).get("of") == big[0]["kernel"] and "slice" in n.meta["tensor_split"]}
        assert len(devices) >= 2
        got = many.run({"x": x})["y"]
        assert len(many.executable.workers) == len(used)
        np.testing.assert_allclose(got, one.run({"x": x})["y"], rtol=1e-5, atol=1e-7)
    finally:
        many.executable.close()


def gemm_chain(widths, seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, w, last = [], {}, "x"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        w[f"w{i}"] = _f32(rng, a, b, scale=a ** -0.5)
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        last = f"r{i}"
    nodes[-1] = helper.make_node("Relu", [f"m{len(widths) - 2}"], ["y"])
    return _model(nodes, [_vi("x", (1, widths[0]))], [_vi("y", (1, widths[-1]))], w)


def test_a_kernel_at_an_unbalanced_boundary_is_split_for_balance():
    # batch 1: each layer is bound by reading its weights, in units of 1536 x 1536 floats: 1, 3, 1, 1. Two
    # stages of whole layers are at best 1 + 3 : 2 (or 1 : 5); cutting the 3 lets them be 3 : 3
    model = gemm_chain([1536, 1536, 4608, 512, 4608])
    kw = dict(target="reference", devices="cpu:0,cpu:1", partition_replicas=1)
    whole = graphc.compile(model, tensor_split=False, **kw).report()["partition"]
    # 4 : 3 units over whole layers (1.33), a little less once the bound counts the one message between stages
    assert "tensor_split" not in whole and whole["bottleneck_vs_lower_bound"] > 1.25
    compiled = graphc.compile(model, **kw)
    part = compiled.report()["partition"]
    compiled.executable.close()
    split = part["tensor_split"]["split"]
    assert [r["op"] for r in split] == ["MatMul"] and split[0]["reason"].startswith("balance")
    # two uneven slices: the cut in the channels falls where the stages even out (about 2/3)
    (a, cut), (cut2, end) = split[0]["channels"]
    assert a == 0 and cut == cut2 and end == 4608 and 0.55 < cut / end < 0.8
    assert part["bottleneck_s"] < 0.8 * whole["bottleneck_s"]
    # against the bound of the graph before splitting (whole kernels), and against the split graph's own
    assert part["unsplit_lower_bound_s"] == pytest.approx(whole["lower_bound_s"])
    assert part["bottleneck_vs_unsplit_lower_bound"] <= 1.05 and part["bottleneck_vs_lower_bound"] <= 1.05
    assert "tensor-split" in part["lower_bound_basis"]


def test_nothing_is_split_when_the_partition_is_already_balanced():
    # two replicas of the whole model (the choice for a stream on two equal devices) are at their bound
    compiled = graphc.compile(gemm_chain([512, 512, 2048, 512]), target="reference", devices="cpu:0,cpu:1")
    part = compiled.report()["partition"]
    compiled.executable.close()
    assert part["replicas"] == 2
    assert part["tensor_split"]["split"] == [] and "unsplit_lower_bound_s" not in part
    assert not any("tensor_split" in n.meta for n in compiled.graph.nodes)
    assert any("within" in note for note in part["tensor_split"]["notes"])


def test_options_are_checked():
    from graphc.errors import OptionError

    with pytest.raises(OptionError, match="tensor_split_tolerance"):
        graphc.compile(gemm_chain([8, 8, 8]), target="reference", devices="cpu:0,cpu:1", tensor_split_tolerance=0.5)
    with pytest.raises(OptionError, match="tensor_split must be"):
        graphc.compile(gemm_chain([8, 8, 8]), target="reference", devices="cpu:0,cpu:1", tensor_split="sometimes")
