"""PassManager: ordering, requires/ensures, IR verification after each pass, error wrapping; DCE; pipelines."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.errors import GraphcError, OptionError, PassError, UnsupportedOpError, VerificationError
from graphc.ir import Graph, verify
from graphc.passes import (Pass, PassContext, PassManager, available_passes, default_pipeline, get_pass,
                           register_pass, resolve_pipeline, unregister_pass)
from graphc.passes.dce import DeadCodeElimination

from .conftest import CHECK_OPS, F32


class Recorder(Pass):
    """Appends its name to ctx.options['trace']; changes nothing."""

    def __init__(self, name: str, requires=(), ensures=(), invalidates=(), changed=False):
        self.name = name
        self.requires = frozenset(requires)
        self.ensures = frozenset(ensures)
        self.invalidates = frozenset(invalidates)
        self.changed = changed

    def run(self, graph, ctx):
        ctx.options.setdefault("trace", []).append(self.name)
        self.log(ctx, f"{self.name} ran", position=len(ctx.options["trace"]))
        return self.changed


def manager(pipeline, **kw) -> PassManager:
    kw.setdefault("check_ops", CHECK_OPS)
    return PassManager(pipeline, **kw)


# -- ordering, records, decision log -----------------------------------------------------------------------
def test_runs_in_order_and_records(chain):
    ctx = PassContext()
    pm = manager([Recorder("a"), Recorder("b", changed=False), Recorder("c"), "dce"], verify=True)
    result = pm.run(chain, ctx)
    assert ctx.options["trace"] == ["a", "b", "c"]
    assert [r.name for r in result.records] == ["a", "b", "c", "dce"] == pm.names
    assert [r.changed for r in result.records] == [False, False, False, True]
    assert result.changed and all(r.seconds >= 0 for r in result.records)
    assert pm.records == result.records
    assert [d.pass_name for d in ctx.decisions] == ["a", "b", "c", "dce"]
    assert ctx.decisions[1].data == {"position": 2}
    assert "[dce] removed 2 dead node(s)" in ctx.format_log()
    report = result.to_dict()
    assert report["properties"] == ["no_dead_code"] and len(report["passes"]) == 4


def test_pass_class_in_pipeline(chain):
    result = manager([DeadCodeElimination]).run(chain, PassContext())
    assert result.records[0].name == "dce" and result.changed


# -- requires / ensures / invalidates -----------------------------------------------------------------------
def test_unmet_requirement_fails_before_anything_runs(chain):
    ctx = PassContext()
    pm = manager([Recorder("first"), Recorder("needs", requires={"no_dead_code"})])
    with pytest.raises(PassError) as info:
        pm.run(chain, ctx)
    msg = str(info.value)
    assert "'needs'" in msg and "'no_dead_code'" in msg and "dce" in msg  # names the pass that would provide it
    assert "trace" not in ctx.options  # the check is static: nothing ran


def test_requirement_met_by_earlier_ensures_or_initial_properties(chain):
    manager(["dce", Recorder("needs", requires={"no_dead_code"})]).run(chain, PassContext())
    ctx = PassContext(properties={"shapes_inferred"})
    result = manager([Recorder("s", requires={"shapes_inferred"}, ensures={"x"})]).run(chain, ctx)
    assert result.properties == {"shapes_inferred", "x"} == ctx.properties


def test_invalidated_property_is_checked_when_the_pass_changed_the_graph(chain):
    breaker = Recorder("breaker", invalidates={"no_dead_code"}, changed=True)
    pm = manager(["dce", breaker, Recorder("needs", requires={"no_dead_code"})])
    with pytest.raises(PassError, match="'needs'.*'no_dead_code'"):
        pm.run(chain, PassContext(verify=False))
    # a pass that invalidates but did not change anything leaves the property in place
    quiet = Recorder("quiet", invalidates={"no_dead_code"}, changed=False)
    manager(["dce", quiet, Recorder("needs", requires={"no_dead_code"})]).run(chain, PassContext())


# -- verification ------------------------------------------------------------------------------------------
class BreaksOrder(Pass):
    """Moves the last node to the front: its inputs are then defined after it."""

    name = "breaks_order"

    def run(self, graph, ctx):
        graph.nodes.insert(0, graph.nodes.pop())
        return True


def test_verifier_names_the_pass_that_broke_the_ir(chain):
    pm = manager(["dce", BreaksOrder()], verify=True)
    with pytest.raises(PassError, match="pass 'breaks_order' left the IR invalid") as info:
        pm.run(chain, PassContext())
    assert isinstance(info.value.__cause__, VerificationError)
    assert [r.name for r in pm.records] == ["dce"]


def test_verification_off_lets_it_through(chain):
    manager([BreaksOrder()], verify=False).run(chain, PassContext())
    with pytest.raises(VerificationError):
        verify(chain, check_ops=False)


def test_verify_follows_context_debug_and_environment(chain, monkeypatch):
    monkeypatch.delenv("GRAPHC_VERIFY", raising=False)
    monkeypatch.delenv("GRAPHC_DEBUG", raising=False)
    assert PassContext().verify is False
    assert PassContext(debug=True).verify is True
    monkeypatch.setenv("GRAPHC_VERIFY", "1")
    ctx = PassContext()
    assert ctx.verify is True
    with pytest.raises(PassError, match="breaks_order"):
        manager([BreaksOrder()]).run(chain, ctx)  # verify=None follows ctx.verify


def test_invalid_input_is_not_blamed_on_the_first_pass(chain):
    chain.nodes.reverse()
    with pytest.raises(PassError, match="already invalid before the pass pipeline"):
        manager(["dce"], verify=True).run(chain, PassContext())


class LiesAboutChanges(Pass):
    name = "liar"

    def run(self, graph, ctx):
        graph.remove_node(graph.nodes[-1])  # the dead Neg
        return False


def test_pass_that_changed_the_graph_must_say_so(chain):
    with pytest.raises(PassError, match="'liar' returned False"):
        manager([LiesAboutChanges()], verify=True).run(chain, PassContext())


# -- exception wrapping ------------------------------------------------------------------------------------
class Crashes(Pass):
    name = "crashes"

    def run(self, graph, ctx):
        return 1 / 0


class RaisesUserError(Pass):
    name = "user_error"

    def run(self, graph, ctx):
        raise UnsupportedOpError([("", "Frobnicate", 17)])


class ReturnsNone(Pass):
    name = "returns_none"

    def run(self, graph, ctx):
        pass


def test_unexpected_exception_becomes_pass_error_with_cause(chain):
    with pytest.raises(PassError, match="pass 'crashes' failed on graph 'chain': ZeroDivisionError") as info:
        manager([Crashes()]).run(chain, PassContext())
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert isinstance(info.value, GraphcError)


def test_graphc_errors_pass_through_unwrapped(chain):
    with pytest.raises(UnsupportedOpError):
        manager([RaisesUserError()]).run(chain, PassContext())


def test_run_must_return_bool(chain):
    with pytest.raises(PassError, match="'returns_none' returned None"):
        manager([ReturnsNone()]).run(chain, PassContext())


# -- registry ----------------------------------------------------------------------------------------------
def test_registry_roundtrip():
    @register_pass
    class Temp(Pass):
        name = "temp_test_pass"

        def __init__(self, level: int = 1):
            self.level = level

        def run(self, graph, ctx):
            return False

    try:
        assert "temp_test_pass" in available_passes() and "dce" in available_passes()
        a, b = get_pass("temp_test_pass"), get_pass("temp_test_pass", level=3)
        assert a is not b and isinstance(a, Temp) and b.level == 3
        with pytest.raises(ValueError, match="registered twice"):
            register_pass(name="temp_test_pass")(lambda: Temp())
        with pytest.raises(PassError, match="could not be created"):
            get_pass("temp_test_pass", bogus=1)
    finally:
        unregister_pass("temp_test_pass")
    assert "temp_test_pass" not in available_passes()


def test_unknown_pass_lists_available():
    with pytest.raises(PassError, match=r"unknown pass 'nope'.*dce"):
        PassManager(["nope"])
    with pytest.raises(PassError, match="neither a pass name"):
        PassManager([42])


def test_factory_registration():
    register_pass(name="temp_factory")(lambda: Recorder("ignored_name"))
    try:
        assert get_pass("temp_factory").name == "ignored_name"
    finally:
        unregister_pass("temp_factory")


# -- pipelines ---------------------------------------------------------------------------------------------
def test_default_and_resolved_pipelines():
    base = default_pipeline("llvm", {})
    assert base == ["constant_folding", "noop_elimination", "batchnorm_folding", "cse", "dce", "fusion",
                    "memory_planning"]
    assert resolve_pipeline("llvm", {}) == base
    rewrites = base[:-1]  # everything before memory planning, which plans what will run and so stays last
    assert resolve_pipeline("llvm", {"passes": ["+myplugin", "+other"]}) == rewrites + ["myplugin", "other",
                                                                                        "memory_planning"]
    assert resolve_pipeline("llvm", {"passes": "+myplugin, -dce"}) == (
        [p for p in rewrites if p != "dce"] + ["myplugin", "memory_planning"])
    assert resolve_pipeline("llvm", {"passes": "-memory_planning, +myplugin"}) == rewrites + ["myplugin"]
    assert resolve_pipeline("cuda", {"passes": ["mine", "dce", "mine"]}) == ["mine", "dce", "mine"]
    with pytest.raises(OptionError, match="mixes"):
        resolve_pipeline("llvm", {"passes": ["+a", "b"]})
    with pytest.raises(OptionError, match="cannot drop"):
        resolve_pipeline("llvm", {"passes": ["-fusion_that_does_not_exist"]})
    with pytest.raises(OptionError):
        resolve_pipeline("llvm", {"passes": 3})


# -- DCE ---------------------------------------------------------------------------------------------------
def test_dce_removes_dead_chain_recursively(chain):
    ctx = PassContext()
    assert get_pass("dce").run(chain, ctx) is True
    verify(chain, check_ops=CHECK_OPS)
    assert [n.name for n in chain.nodes] == ["relu", "add"]
    x = chain.inputs[0]
    assert sorted(n.name for n, _ in x.uses) == ["add", "relu"]  # the dead Mul's two uses are gone
    (decision,) = ctx.decisions_of("dce")
    assert decision.data["by_op"] == {"Neg": 1, "Mul": 1} and decision.data["nodes"] == ["dead_neg", "dead_mul"]
    assert get_pass("dce").run(chain, ctx) is False  # idempotent


def test_dce_keeps_outputs_side_effects_and_inputs():
    g = Graph("keep")
    x = g.add_input("x", F32)
    unused_input = g.add_input("unused", F32)
    kept = g.add_node("Relu", [x], name="marked")
    kept.meta["side_effects"] = True
    out = g.add_node("Neg", [x], name="out").outputs[0]
    g.outputs = [out, x]
    assert DeadCodeElimination().run(g, PassContext()) is False
    assert [n.name for n in g.nodes] == ["marked", "out"] and unused_input in g.inputs


def test_dce_removes_unused_weights():
    g = Graph("weights")
    x = g.add_input("x", F32)
    w = g.add_initializer("w", np.ones((2, 3), np.float32))
    g.add_initializer("unused_w", np.ones((2, 3), np.float32))
    dead_w = g.add_initializer("dead_w", np.ones((2, 3), np.float32))
    g.add_node("Mul", [x, dead_w], name="dead")
    g.outputs = [g.add_node("Add", [x, w]).outputs[0]]
    ctx = PassContext()
    assert DeadCodeElimination().run(g, ctx) is True
    assert list(g.initializers) == ["w"]
    assert sorted(ctx.decisions[0].data["weights"]) == ["dead_w", "unused_w"]
    verify(g, check_ops=CHECK_OPS)


def _if_graph():
    """y = If(c) {then: Relu(a) ; else: b} where a = Neg(x), b = Mul(x, x) (an outer value returned directly)."""
    g = Graph("cond")
    x = g.add_input("x", F32)
    c = g.add_input("c")
    a = g.add_node("Neg", [x], name="a").outputs[0]
    b = g.add_node("Mul", [x, x], name="b").outputs[0]
    dead_outer = g.add_node("Add", [x, x], name="read_only_by_dead_inner").outputs[0]
    then_g = Graph("then", parent=g)
    then_g.add_node("Relu", [dead_outer], name="dead_inner")
    then_g.outputs = [then_g.add_node("Relu", [a], name="then_relu").outputs[0]]
    else_g = Graph("else", parent=g)
    else_g.outputs = [b]
    node = g.add_node("If", [c], attrs={"then_branch": then_g, "else_branch": else_g}, name="if")
    return g, node


def test_dce_inside_subgraphs_and_outer_values_they_read():
    g, node = _if_graph()
    g.outputs = [node.outputs[0]]
    verify(g, check_ops=CHECK_OPS)
    assert DeadCodeElimination().run(g, PassContext()) is True
    verify(g, check_ops=CHECK_OPS)
    then_g = node.attrs["then_branch"]
    assert [n.name for n in then_g.nodes] == ["then_relu"]
    # 'b' is only returned (not read by a node) by the else branch: it must survive
    assert [n.name for n in g.nodes] == ["a", "b", "if"]


def test_dce_removes_dead_control_flow_with_its_captures():
    g, node = _if_graph()
    x = g.inputs[0]
    g.outputs = [x]
    assert DeadCodeElimination().run(g, PassContext()) is True
    assert g.nodes == [] and x.uses == []
    verify(g, check_ops=CHECK_OPS)


def test_dce_is_registered_with_docs():
    p = get_pass("dce")
    assert p.ensures == {"no_dead_code"} and not p.requires
    assert "dead-code" in type(p).describe().lower()
