import numpy as np
import pytest

from graphc.errors import VerificationError
from graphc.ir import Graph, TensorType, verify


def small_graph():
    g = Graph("g", opsets={"": 17})
    x = g.add_input("x", TensorType(np.float32, ("N", 4)))
    w = g.add_initializer("w", np.ones((4, 3), np.float32))
    mm = g.add_node("MatMul", [x, w], output_names=["y"])
    sm = g.add_node("Softmax", [mm.outputs[0]], output_names=["z"], attrs={"axis": -1})
    g.outputs.append(sm.outputs[0])
    return g, x, w, mm, sm


def test_uses_follow_mutations():
    g, x, w, mm, sm = small_graph()
    assert mm.outputs[0].uses == [(sm, 0)]
    assert x.uses == [(mm, 0)]
    sm.set_input(0, x)
    assert mm.outputs[0].uses == [] and (sm, 0) in x.uses


def test_verify_accepts_valid_graph_and_printer_reads_like_code():
    g, *_ = small_graph()
    verify(g)
    text = str(g)
    assert "graph g(%x: float32[N,4]) -> (%z: float32[?])" in text or "graph g(%x: float32[N,4])" in text
    assert "%y = MatMul(%x, %w)" in text
    assert "{axis=-1}" in text


def test_verify_rejects_out_of_order_nodes():
    g, x, w, mm, sm = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="not defined before"):
        verify(g)


def test_verify_rejects_duplicate_names_and_stale_uses():
    g, x, w, mm, sm = small_graph()
    sm.outputs[0].name = "y"
    with pytest.raises(VerificationError, match="defined twice"):
        verify(g)
    g, x, w, mm, sm = small_graph()
    sm.inputs[0] = x  # edited by hand, bypassing set_input: uses are now stale
    with pytest.raises(VerificationError):
        verify(g)


def test_verify_rejects_unknown_op():
    g, x, w, mm, sm = small_graph()
    g.add_node("NoSuchOp", [x])
    with pytest.raises(VerificationError, match="unknown to the registry"):
        verify(g)


def test_networkx_view_and_topological_sort():
    g, x, w, mm, sm = small_graph()
    view = g.to_networkx()
    assert list(view.edges) == [(mm, sm)]
    g.nodes.reverse()
    g.topological_sort()
    assert g.nodes == [mm, sm]
    verify(g)


def test_remove_node_refuses_used_outputs():
    g, x, w, mm, sm = small_graph()
    with pytest.raises(ValueError):
        g.remove_node(mm)
    g.outputs = [mm.outputs[0]]
    g.remove_node(sm)
    assert x.uses == [(mm, 0)] and mm.outputs[0].uses == []
    verify(g)
