"""Turning a group of root-graph nodes into one ``graphc::FusedKernel`` node (the members are moved, not copied)."""

from __future__ import annotations

from typing import Any

from ...ir.graph import Graph, Node


def group_io(graph: Graph, members: list[Node], pinned: set[int]) -> tuple[list, list]:
    """(external inputs, outputs) of a group: inputs once each in first-read order; outputs are the members'
    values read outside the group, returned by the graph, or returned directly by a subgraph."""
    inside = set(members)
    inputs: dict[int, Any] = {}
    outputs: list = []
    for m in members:
        for x in m.inputs:
            if x is not None and x.producer not in inside:
                inputs.setdefault(id(x), x)
        for o in m.outputs:
            if o is None:
                continue
            if id(o) in pinned or any(u not in inside for u, _ in o.uses):
                outputs.append(o)
    return list(inputs.values()), outputs


def _replace_in_subgraph_outputs(graph: Graph, old, new, skip: Node) -> None:
    for node in graph.walk():
        if node is skip:
            continue
        for sub in node.subgraphs():
            if any(o is old for o in sub.outputs):
                sub.outputs = [new if o is old else o for o in sub.outputs]


def wrap_group(graph: Graph, members: list[Node], name: str, kind: str, rule: str, pinned: set[int]) -> Node:
    """Replace ``members`` (in topological order) by one FusedKernel node appended to ``graph.nodes``.

    The caller re-sorts ``graph.nodes`` topologically afterwards. The kernel's outputs keep the names of the
    values they stand for (graph outputs keep theirs); the values inside the body get fresh names.
    """
    inputs, outputs = group_io(graph, members, pinned)
    inside = set(members)
    body = Graph(name, opsets=graph.opsets, parent=graph)
    mapping = {id(x): body.add_input(graph.fresh_name(f"{x.name}_in"), x.type) for x in inputs}
    graph.nodes = [n for n in graph.nodes if n not in inside]
    for m in members:
        m.graph = body
        body.nodes.append(m)
        for o in m.outputs:
            if o is not None:
                o.graph = body
        for i, x in enumerate(m.inputs):
            if x is not None and id(x) in mapping:
                m.set_input(i, mapping[id(x)])
    outer_names = [o.name for o in outputs]
    outside_uses = [[(u, i) for u, i in o.uses if u not in inside] for o in outputs]
    for o in outputs:
        o.name = graph.fresh_name(f"{o.name}_k")
    body.outputs = list(outputs)
    graph.opsets.setdefault("graphc", 1)
    kernel = graph.add_node("FusedKernel", inputs, domain="graphc", name=name, output_names=outer_names,
                            attrs={"body": body, "kind": kind, "rule": rule})
    for inner, outer, uses in zip(outputs, kernel.outputs, outside_uses):
        outer.type = inner.type
        for user, i in uses:
            user.set_input(i, outer)
        if any(v is inner for v in graph.outputs):
            graph.outputs = [outer if v is inner else v for v in graph.outputs]
        _replace_in_subgraph_outputs(graph, inner, outer, kernel)
    return kernel
