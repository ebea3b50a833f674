"""Dead-code elimination.

Requires: nothing. Ensures: ``no_dead_code``. Invalidates: nothing.

Rules:

- a node is dead when none of its outputs is read (by a node of its graph, by a node inside a subgraph, or
  as an output of its graph) and it has no side effects; dead nodes are removed, and so, transitively, the
  nodes that only they read (one sweep in reverse topological order finds them all);
- ONNX inference ops have no side effects. An op definition may still declare ``side_effects = True`` and a
  pass may set ``node.meta["side_effects"] = True``: such nodes are kept;
- removing a node with subgraphs (If/Loop/Scan) also drops the uses its subgraphs made of outer values;
  an outer value that a live subgraph returns directly as one of its outputs counts as read;
- the subgraphs of live nodes are cleaned the same way (their outputs are kept: they are the body's
  signature); graph inputs are never removed (they are the model's signature);
- unused initializers (weights nothing reads) are removed, unless they share a name with a graph input;
- a live node keeps all its outputs, even unused optional ones.

Each run logs one decision with the removed node names, a count by op type and the removed weights.
"""

from __future__ import annotations

from collections import Counter

from ..ir.graph import Graph, Node
from .base import Pass, PassContext
from .registry import register_pass


def has_side_effects(node: Node) -> bool:
    if node.meta.get("side_effects"):
        return True
    try:
        from ..ops import registry
    except Exception:  # the op registry is optional for DCE
        return False
    opdef = registry.lookup(node.domain, node.op_type)
    return bool(getattr(opdef, "side_effects", False))


def _erase(graph: Graph, node: Node) -> int:
    """Remove a dead node; first detach every use its subgraphs make. Returns the number of nodes dropped."""
    dropped = 1
    for sub in node.subgraphs():
        for inner in list(sub.walk()):
            for i in range(len(inner.inputs)):
                inner.set_input(i, None)
            dropped += 1
    graph.remove_node(node)
    return dropped


@register_pass
class DeadCodeElimination(Pass):
    """Dead-code elimination: remove nodes and weights whose results nothing reads, also in subgraphs.

    Requires nothing; ensures ``no_dead_code``. See the module docstring for the rules.
    """

    name = "dce"
    ensures = frozenset({"no_dead_code"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        removed: list[Node] = []
        weights: list[str] = []
        dropped = self._sweep(graph, removed, weights, set())
        if removed or weights:
            by_op = Counter(n.op_type for n in removed)
            self.log(ctx, f"removed {dropped} dead node(s) and {len(weights)} unused weight(s)",
                     nodes=[n.name or n.op_type for n in removed], by_op=dict(by_op), weights=weights)
        return bool(removed or weights)

    def _sweep(self, graph: Graph, removed: list[Node], weights: list[str], pinned: set[int]) -> int:
        """Clean ``graph``; ``pinned`` holds ids of outer values that live subgraphs return directly."""
        dropped = 0
        graph_outputs = {id(v) for v in graph.outputs}
        for node in reversed(list(graph.nodes)):
            live = any(out is not None and (out.uses or id(out) in graph_outputs or id(out) in pinned)
                       for out in node.outputs)
            if live or has_side_effects(node):
                for sub in node.subgraphs():  # cleaning a body may free outer values read by earlier nodes
                    dropped += self._sweep(sub, removed, weights, pinned)
                    pinned.update(id(v) for v in sub.outputs)
            else:
                dropped += _erase(graph, node)
                removed.append(node)
        weights.extend(self._drop_weights(graph, pinned))
        return dropped

    @staticmethod
    def _drop_weights(graph: Graph, pinned: set[int]) -> list[str]:
        outputs = {id(v) for v in graph.outputs}
        input_names = {v.name for v in graph.inputs}
        dead = [name for name, v in graph.initializers.items()
                if not v.uses and id(v) not in outputs and id(v) not in pinned and name not in input_names]
        for name in dead:
            del graph.initializers[name]
        return dead
