"""The memory planning pass: liveness, in-place reuse, placement, schedule choice and symbolic rescaling on
hand-built graphs; arena execution equal to plain execution; and the zoo table (arena vs LOAD)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc
from graphc import zoo
from graphc.backends.reference.executor import ReferenceExecutable
from graphc.frontend import import_onnx
from graphc.passes import PassContext, PassManager, default_pipeline
from graphc.passes.memory_planning import is_topological, plan_memory
from graphc.plan.memory import Buffer, MemoryPlan, memory_plan_of, place_buffers

F = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, F, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def planned(model, passes=("memory_planning",)):
    graph = import_onnx(model, None)
    ctx = PassContext(target="reference", properties={"shapes_inferred"}, verify=True)
    PassManager(list(passes), verify=True).run(graph, ctx)
    summary = next(d for d in ctx.decisions_of("memory_planning") if d.data.get("summary"))
    return graph, ctx, summary.data


def plan_of(graph, summary) -> MemoryPlan:
    class _P:  # the two things memory_plan_of reads from a Plan
        decisions = [{"pass": "memory_planning", "data": summary}]
    _P.graph = graph
    return memory_plan_of(_P)


def run_both(model, feeds, passes=None):
    """Outputs of plain and arena execution of the same compiled model."""
    kw = {"passes": list(passes)} if passes else {}
    plain = graphc.compile(model, target="reference", **kw)
    arena = graphc.compile(model, target="reference", execute_in_arena=True, **kw)
    assert arena.executable.memory_plan is not None
    return plain.run(feeds), arena.run(feeds)


def softmax_chain(n=4, shape=(8, 16)):
    """x -> Softmax -> s0 -> Softmax -> s1 ... -> out (Softmax is not elementwise: no in-place)."""
    names = ["x"] + [f"s{i}" for i in range(n - 1)] + ["out"]
    nodes = [helper.make_node("Softmax", [a], [b], name=f"sm{i}") for i, (a, b) in enumerate(zip(names, names[1:]))]
    return make_model(nodes, [("x", list(shape))], ["out"])


# -- placement and liveness -------------------------------------------------------------------------------------

def test_disjoint_lifetimes_share_memory_and_overlapping_never():
    graph, _, summary = planned(softmax_chain(5))
    plan = plan_of(graph, summary)
    b = plan.by_value()
    assert set(b) == {"s0", "s1", "s2", "s3"}  # x (input) and out (output) are not in the arena
    assert [(b[v].start, b[v].end) for v in ("s0", "s1", "s2", "s3")] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert b["s0"].offset != b["s1"].offset and b["s1"].offset != b["s2"].offset
    assert b["s0"].offset == b["s2"].offset and b["s1"].offset == b["s3"].offset  # reuse of dead buffers
    size = 8 * 16 * 4
    assert plan.arena_bytes == plan.lower_bound_bytes == 2 * size and plan.naive_bytes == 4 * size
    assert plan.check() == [] and plan.in_place_count == 0
    assert summary["heuristic"] and summary["in_place"] == 0


def test_placement_never_overlaps_on_random_interval_sets():
    rng = np.random.default_rng(0)
    for trial in range(40):
        steps = int(rng.integers(3, 40))
        buffers = []
        for i in range(int(rng.integers(1, 60))):
            start = int(rng.integers(0, steps))
            end = int(min(steps - 1, start + rng.integers(0, 8)))
            buffers.append(Buffer(f"v{i}", int(rng.integers(1, 5000)), start, end))
        plan = place_buffers(buffers, steps)
        assert plan.check() == [], trial
        assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes
        assert all(b.offset % 64 == 0 for b in plan.buffers)


def test_weights_inputs_and_outputs_are_not_planned():
    w = np.ones((16, 16), np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                        helper.make_node("Softmax", ["h"], ["s"]),
                        helper.make_node("MatMul", ["s", "w"], ["out"]),
                        helper.make_node("Softmax", ["out"], ["out2"])],
                       [("x", [4, 16])], ["out", "out2"], [("w", w)])
    graph, _, summary = planned(model)
    names = {b.value for b in plan_of(graph, summary).buffers}
    assert names == {"h", "s"}  # not x (input), w (weight), out (an output also read later), out2 (output)


def test_in_place_only_when_the_input_dies():
    # s dies at the Relu: r takes its buffer
    dies = make_model([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
                       helper.make_node("Softmax", ["r"], ["out"])], [("x", [8, 16])], ["out"])
    graph, ctx, summary = planned(dies)
    b = plan_of(graph, summary).by_value()
    assert b["r"].in_place_of == "s" and b["r"].offset == b["s"].offset and summary["in_place"] == 1
    assert any(d.data.get("in_place_of") == "s" for d in ctx.decisions_of("memory_planning"))
    # s is read again after the Relu: no in-place, and r, s never overlap
    lives = make_model([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
                        helper.make_node("Add", ["r", "s"], ["a"]), helper.make_node("Softmax", ["a"], ["out"])],
                       [("x", [8, 16])], ["out"])
    graph, _, summary = planned(lives)
    plan = plan_of(graph, summary)
    b = plan.by_value()
    assert b["r"].in_place_of is None and b["r"].offset != b["s"].offset
    assert b["a"].in_place_of in ("r", "s")  # both die at the Add
    assert plan.check() == []
    # a graph input is never overwritten; a non-elementwise op never writes in place
    graph, _, summary = planned(make_model([helper.make_node("Relu", ["x"], ["r"]),
                                            helper.make_node("Softmax", ["r"], ["s"]),
                                            helper.make_node("Softmax", ["s"], ["out"])], [("x", [8, 16])], ["out"]))
    assert all(b.in_place_of is None for b in plan_of(graph, summary).buffers)


def test_in_place_needs_same_shape_and_dtype():
    # the broadcast operand (8x1) cannot be overwritten by the 8x16 result; the full-size one can
    model = make_model([helper.make_node("Softmax", ["x"], ["s"]),
                        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1]),
                        helper.make_node("Sub", ["m", "s"], ["d"]), helper.make_node("Softmax", ["d"], ["out"])],
                       [("x", [8, 16])], ["out"])
    graph, _, summary = planned(model)
    assert plan_of(graph, summary).by_value()["d"].in_place_of == "s"


def test_arena_execution_matches_plain_on_hand_built_graphs():
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Softmax", ["x"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
                        helper.make_node("Add", ["r", "s"], ["a"]), helper.make_node("Neg", ["a"], ["n"]),
                        helper.make_node("Softmax", ["n"], ["m"]), helper.make_node("Mul", ["m", "a"], ["out"])],
                       [("x", [8, 16])], ["out"])
    feeds = {"x": rng.standard_normal((8, 16)).astype(np.float32)}
    for passes in (["memory_planning"], ["fusion", "memory_planning"]):
        plain, arena = run_both(model, feeds, passes)
        np.testing.assert_array_equal(arena["out"], plain["out"])


# -- schedule choice ----------------------------------------------------------------------------------------------

def two_branches():
    """x[1,64] -> Tile x64 (16 KiB) -> ReduceMax -> [1,64], twice; given order runs both Tiles first."""
    reps = np.array([64, 1], np.int64)
    nodes = [helper.make_node("Tile", ["x", "reps"], ["ta"], name="tile_a"),
             helper.make_node("Tile", ["x", "reps"], ["tb0"], name="tile_b"),
             helper.make_node("Neg", ["tb0"], ["tb"], name="neg_b"),
             helper.make_node("ReduceMax", ["ta"], ["ra"], axes=[0], name="red_a"),
             helper.make_node("ReduceMax", ["tb"], ["rb"], axes=[0], name="red_b"),
             helper.make_node("Add", ["ra", "rb"], ["out"], name="add")]
    return make_model(nodes, [("x", [1, 64])], ["out"], [("reps", reps)])


def test_schedule_choice_lowers_load_and_stays_topological():
    model = two_branches()
    graph = import_onnx(model, None)
    given = [n.name for n in graph.nodes]
    _, _, info = plan_memory(graph, reorder=False)
    before = info["candidates"]["given"]["lower_bound_bytes"]
    graph, ctx, summary = planned(model)
    order = [n.name for n in graph.nodes]
    assert order != given and is_topological(graph, graph.nodes)
    assert order.index("red_a") < order.index("tile_b") or order.index("red_b") < order.index("tile_a")
    assert summary["lower_bound_bytes"] < before and summary["schedule"] != "given"
    assert any("reordered" in d.message for d in ctx.decisions_of("memory_planning"))
    # reordering can be turned off
    ctx = PassContext(target="reference", properties={"shapes_inferred"}, options={"memory_reorder": False})
    g2 = import_onnx(model, None)
    assert PassManager(["memory_planning"]).run(g2, ctx).changed is False and [n.name for n in g2.nodes] == given
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
    plain, arena = run_both(model, feeds, ["memory_planning"])
    np.testing.assert_array_equal(arena["out"], plain["out"])


# -- symbolic dims ------------------------------------------------------------------------------------------------

def test_symbolic_batch_rescales_exactly():
    graph, _, summary = planned(softmax_chain(5, ("N", 16)))
    plan = plan_of(graph, summary)
    assert plan.rescale == "exact" and plan.symbols == ["N"]
    assert all(b.symbols == {"N": 1} and b.bytes_per_unit == 64 for b in plan.buffers)
    big = plan.at({"N": 8})
    assert big.rescale == "exact" and big.arena_bytes == 8 * plan.arena_bytes
    assert big.lower_bound_bytes == 8 * plan.lower_bound_bytes and big.check() == []
    assert [b.offset for b in big.buffers] == [8 * b.offset for b in plan.buffers]
    assert [b.size for b in big.buffers] == [8 * 64] * 4
    with pytest.raises(KeyError):
        plan.at({})
    # JSON round trip
    assert MemoryPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
    # running with batch 3 in the arena: the plan is bound from the inputs
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    plain, arena = run_both(softmax_chain(5, ("N", 16)), feeds)
    np.testing.assert_array_equal(arena["out"], plain["out"])


def test_mixed_monomials_replan():
    model = make_model([helper.make_node("Softmax", ["y"], ["s"]), helper.make_node("Softmax", ["x"], ["t"]),
                        helper.make_node("MatMul", ["t", "s"], ["u"]), helper.make_node("Softmax", ["u"], ["out"])],
                       [("x", ["N", 4]), ("y", [4, 4])], ["out"])
    graph, _, summary = planned(model)
    plan = plan_of(graph, summary)
    assert plan.rescale == "replan"
    big = plan.at({"N": 1000})
    assert big.rescale == "replanned" and "re-planned" in big.heuristic and big.check() == []
    assert big.by_value()["t"].size == 1000 * 16 and big.by_value()["s"].size == 64
    assert big.lower_bound_bytes <= big.arena_bytes
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((5, 4)).astype(np.float32), "y": rng.standard_normal((4, 4)).astype(np.float32)}
    plain, arena = run_both(model, feeds)
    np.testing.assert_array_equal(arena["out"], plain["out"])


# -- pipeline, report, inspect -------------------------------------------------------------------------------------

def test_memory_planning_runs_last_and_reports():
    assert default_pipeline("reference")[-1] == "memory_planning"
    assert default_pipeline("reference").index("fusion") < default_pipeline("reference").index("memory_planning")
    compiled = graphc.compile(softmax_chain(5), target="reference", passes=["memory_planning"])
    mem = compiled.report()["memory"]
    assert mem["arena_bytes"] == mem["lower_bound_bytes"] == 2 * 8 * 16 * 4
    assert mem["naive_bytes"] == 4 * 8 * 16 * 4 and mem["weights_bytes"] == 0
    assert mem["heuristic"] and mem["in_place"] == 0
    from graphc.cli import model_tables, render_html

    page = render_html(compiled, model_tables(compiled))
    assert 'aria-label="memory plan' in page and page.count("live steps") == 4 and "LOAD" in page


# -- zoo -----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_models():
    """Each zoo model (random weights) compiled once: (compiled, feeds)."""
    out = {}
    for name in zoo.MODELS:
        model = zoo.load(name, weights="random", seed=0)
        out[name] = (graphc.compile(model, target="reference"), zoo.sample_inputs(model, seed=1))
    return out


@pytest.mark.slow
def test_zoo_arena_within_5_percent_of_load(zoo_models):
    rows = []
    for name, (compiled, _) in zoo_models.items():
        mem = compiled.report()["memory"]
        plan = memory_plan_of(compiled.plan)
        assert plan is not None and plan.check() == []
        ratio = mem["arena_bytes"] / mem["lower_bound_bytes"]
        rows.append((name, mem["lower_bound_bytes"], mem["arena_bytes"], ratio, mem["naive_bytes"], mem["heuristic"],
                     mem["schedule"]))
    print("\nmodel          LOAD         arena        ratio   naive         heuristic            schedule")
    for r in rows:
        print(f"{r[0]:14s} {r[1]:>12,} {r[2]:>12,} {r[3]:6.3f}  {r[4]:>13,} {r[5]:20s} {r[6]}")
    assert all(r[3] <= 1.05 for r in rows), rows


@pytest.mark.slow
def test_zoo_arena_execution_identical(zoo_models):
    for name, (compiled, feeds) in zoo_models.items():
        plain = compiled.run(feeds)
        compiled.plan.options["execute_in_arena"] = True
        try:
            arena_exe = ReferenceExecutable(compiled.plan)
        finally:
            compiled.plan.options.pop("execute_in_arena")
        assert arena_exe.memory_plan is not None
        got = arena_exe.run([feeds[n] for n in compiled.input_names])
        for k, v in zip(compiled.output_names, got):
            np.testing.assert_array_equal(v, plain[k], err_msg=name)


@pytest.mark.slow
def test_arena_execution_detects_an_overlapping_plan(zoo_models):
    """The proof works: make two buffers that are live together share memory, and the outputs change."""
    compiled, feeds = zoo_models["squeezenet"]
    plain = compiled.run(feeds)
    plan = memory_plan_of(compiled.plan)
    a, b = next((a, b) for a in plan.buffers for b in plan.buffers
                if a.value != b.value and a.start < b.start <= a.end and b.size >= a.size)
    meta = next(n.meta["buffers"] for n in compiled.plan.graph.nodes if b.value in n.meta.get("buffers", {}))
    saved = meta[b.value]["offset"]
    meta[b.value]["offset"] = a.offset  # b now overwrites a while a is still to be read
    try:
        compiled.plan.options["execute_in_arena"] = True
        broken = ReferenceExecutable(compiled.plan)
        got = broken.run([feeds[n] for n in compiled.input_names])
    finally:
        meta[b.value]["offset"] = saved
        compiled.plan.options.pop("execute_in_arena")
    assert any(not np.array_equal(v, plain[k]) for k, v in zip(compiled.output_names, got))
