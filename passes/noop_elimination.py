"""No-op elimination: remove nodes that pass their input through unchanged, and shorten chains of layout ops.

Requires: ``shapes_inferred`` (whether a Reshape or Cast changes anything is read off the value types).
Ensures: nothing on its own. Invalidates: nothing (a node made dead by a rewrite here is removed here).

Rules (``forwarding`` a node means: its readers read its input instead, and the node is removed):

- ``Identity`` is forwarded;
- ``Dropout`` in inference (opset >= 12: no ``training_mode`` input or a constant false one, or a constant
  ratio of 0; opsets 7-11: always; before 7: ``is_test``) is forwarded. If its ``mask`` output is read, the
  mask becomes a constant all-true tensor (bool from opset 10, the data's type before) of the data's static
  shape; when that shape is not static (or the mask would pass ``fold_limit_bytes``) the node is kept;
- ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze`` and ``Expand`` whose output type equals the input type,
  both with a static shape, are forwarded (same shape means same data for these ops); ``Cast`` to the
  input's own dtype and ``CastLike`` of a same-dtype target are forwarded;
- ``Transpose`` with the identity permutation is forwarded. ``Transpose(Transpose(x, p1), p2)`` becomes one
  ``Transpose(x, q)`` with ``q[i] = p1[p2[i]]`` (forwarded to ``x`` when ``q`` is the identity); the first
  Transpose is removed when nothing else reads it. A missing ``perm`` means "reverse" and needs a known rank;
- ``Reshape(R(x), shape)`` where ``R`` is a Reshape, Flatten, Squeeze or Unsqueeze and ``shape`` is a constant
  without 0 entries (or with ``allowzero=1``) reads ``x`` directly (element order is unchanged by all of
  them); ``R`` is removed when nothing else reads it;
- graph outputs keep their names: when the output of a forwarded node is an output of its graph, the value it
  forwards takes over that name, which is only done when that value is produced by a node of the same graph
  and is not itself a graph output; otherwise the node is kept (a graph input or a weight never gets renamed);
- subgraphs (If/Loop/Scan bodies) get the same rules, each body on its own; nodes are visited in topological
  order and the sweep repeats until nothing changes.

Each run logs one decision with the count of rewrites by rule and the nodes removed, plus one decision for each
Dropout kept because its mask is read and its shape is not static.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType, dtype_from_onnx
from .base import Pass, PassContext
from .constant_folding import (STANDARD_DOMAINS, all_graphs, dropout_is_inference, fold_limit, is_read,
                               is_returned, node_label, replace_value)
from .registry import register_pass

_SAME_TYPE_NOOPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand"})
_RESHAPE_LIKE = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _static(t: Any) -> bool:
    return isinstance(t, TensorType) and t.dtype is not None and t.is_static


def _perm(node: Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    x = node.inputs[0] if node.inputs else None
    rank = x.type.rank if x is not None and isinstance(x.type, TensorType) else None
    return None if rank is None else list(range(rank))[::-1]


class _Run:
    def __init__(self, ctx: PassContext, graphs: list[Graph]):
        self.ctx = ctx
        self.graphs = graphs
        self.limit = fold_limit(ctx)
        self.rules: Counter = Counter()
        self.removed: list[str] = []
        self.kept: set[int] = set()


@register_pass
class NoopElimination(Pass):
    """No-op elimination: Identity, inference Dropout, shape-preserving Reshape/Flatten/Squeeze/Unsqueeze/Expand,
    same-dtype Cast, identity Transpose; composes Transpose chains and collapses Reshape chains.

    Requires ``shapes_inferred``; graph outputs keep their names. See the module docstring for the rules.
    """

    name = "noop_elimination"
    requires = frozenset({"shapes_inferred"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        state = _Run(ctx, all_graphs(graph))
        changed = False
        for g in state.graphs:
            changed |= self._sweep(g, state)
        if changed:
            self.log(ctx, f"{sum(state.rules.values())} rewrite(s), {len(state.removed)} node(s) removed",
                     by_rule=dict(sorted(state.rules.items())), removed=state.removed)
        return changed

    def _sweep(self, graph: Graph, state: _Run) -> bool:
        changed = False
        progress = True
        while progress:
            progress = False
            for node in list(graph.nodes):
                if node.graph is graph and node.domain in STANDARD_DOMAINS and not node.subgraphs():
                    progress |= self._visit(graph, node, state)
            changed |= progress
        return changed

    # -- rewiring --------------------------------------------------------------------------------------------
    @staticmethod
    def _can_take_over(graph: Graph, out: Value, source: Value, state: _Run) -> bool:
        """Whether ``out``'s readers can read ``source`` instead without renaming a graph output badly."""
        if not is_returned(out, state.graphs):
            return True
        if out.graph is not graph or not any(o is out for o in graph.outputs):
            return False  # returned by some other body: leave it alone
        if any(o is out for g in state.graphs if g is not graph for o in g.outputs):
            return False
        producer = source.producer
        return (producer is not None and producer.graph is graph and not is_returned(source, state.graphs))

    def _forward(self, graph: Graph, node: Node, pairs: list[tuple[Value, Any]], state: _Run, rule: str) -> bool:
        """Replace each ``out`` by its ``source`` (a Value, or an array that becomes a weight named like ``out``)
        and remove ``node``; returns False, changing nothing, when a graph output would lose its name."""
        pairs = [(o, s) for o, s in pairs if o is not None]
        if not all(isinstance(s, np.ndarray) or self._can_take_over(graph, o, s, state) for o, s in pairs):
            return False
        renames = []
        for out, source in pairs:
            if isinstance(source, np.ndarray):
                source = graph.add_initializer(out.name, source)
            elif any(o is out for o in graph.outputs):
                renames.append((source, out.name))
            replace_value(out, source, state.graphs)
        graph.remove_node(node)
        for source, name in renames:
            source.name = name
        state.rules[rule] += 1
        state.removed.append(node_label(node))
        return True

    def _drop_if_dead(self, graph: Graph, node: Node, state: _Run) -> None:
        if node.graph is graph and not any(is_read(o, state.graphs) for o in node.outputs):
            graph.remove_node(node)
            state.removed.append(node_label(node))

    # -- rules -----------------------------------------------------------------------------------------------
    def _visit(self, graph: Graph, node: Node, state: _Run) -> bool:
        op = node.op_type
        if not node.inputs or node.inputs[0] is None or not node.outputs or node.outputs[0] is None:
            return False
        x, y = node.inputs[0], node.outputs[0]
        if op == "Identity":
            return self._forward(graph, node, [(y, x)], state, "identity")
        if op == "Dropout":
            return self._dropout(graph, node, state)
        if op in _SAME_TYPE_NOOPS:
            if _static(x.type) and _static(y.type) and x.type == y.type:
                if self._forward(graph, node, [(y, x)], state, f"noop_{op.lower()}"):
                    return True
            if op == "Reshape":
                return self._collapse_reshape(graph, node, state)
            return False
        if op == "Cast":
            to = node.attrs.get("to")
            if (to is not None and isinstance(x.type, TensorType) and x.type.dtype is not None
                    and dtype_from_onnx(int(to)) == x.type.dtype):
                return self._forward(graph, node, [(y, x)], state, "noop_cast")
            return False
        if op == "CastLike":
            target = node.inputs[1] if len(node.inputs) > 1 else None
            if (target is not None and isinstance(x.type, TensorType) and isinstance(target.type, TensorType)
                    and x.type.dtype is not None and x.type.dtype == target.type.dtype):
                return self._forward(graph, node, [(y, x)], state, "noop_castlike")
            return False
        if op == "Transpose":
            return self._transpose(graph, node, state)
        return False

    def _dropout(self, graph: Graph, node: Node, state: _Run) -> bool:
        if not dropout_is_inference(node):
            return False
        x, y = node.inputs[0], node.outputs[0]
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        pairs: list[tuple[Value, Any]] = [(y, x)]
        if is_read(mask, state.graphs):
            t = x.type
            dtype = np.dtype(np.bool_) if (node.opset or 1) >= 10 else (t.dtype if isinstance(t, TensorType) else None)
            if not _static(t) or dtype is None or t.numel() * dtype.itemsize > state.limit:
                if id(node) not in state.kept:
                    state.kept.add(id(node))
                    self.log(state.ctx, f"kept Dropout {node_label(node)!r}: its mask is read and the data's "
                                        "shape is not static (or the mask is over fold_limit_bytes)",
                             node=node_label(node), shape=str(t))
                return False
            pairs.append((mask, np.ones(t.shape, dtype)))
        return self._forward(graph, node, pairs, state, "dropout")

    def _transpose(self, graph: Graph, node: Node, state: _Run) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        p2 = _perm(node)
        if p2 is None:
            return False
        if p2 == list(range(len(p2))):
            if self._forward(graph, node, [(y, x)], state, "noop_transpose"):
                return True
        first = x.producer
        if (first is None or first.graph is not graph or first.op_type != "Transpose"
                or first.domain not in STANDARD_DOMAINS or first.inputs[0] is None):
            return False
        p1 = _perm(first)
        if p1 is None or len(p1) != len(p2):
            return False
        q = [p1[i] for i in p2]
        source = first.inputs[0]
        if q == list(range(len(q))) and self._forward(graph, node, [(y, source)], state, "transpose_cancel"):
            self._drop_if_dead(graph, first, state)
            return True
        node.set_input(0, source)
        node.attrs["perm"] = q
        state.rules["transpose_compose"] += 1
        self._drop_if_dead(graph, first, state)
        return True

    def _collapse_reshape(self, graph: Graph, node: Node, state: _Run) -> bool:
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const is None:
            return False
        shape = np.asarray(node.inputs[1].const).reshape(-1)
        if 0 in shape and not int(node.attrs.get("allowzero", 0)):
            return False
        first = node.inputs[0].producer
        if (first is None or first.graph is not graph or first.op_type not in _RESHAPE_LIKE
                or first.domain not in STANDARD_DOMAINS or not first.inputs or first.inputs[0] is None):
            return False
        node.set_input(0, first.inputs[0])
        state.rules["reshape_chain"] += 1
        self._drop_if_dead(graph, first, state)
        return True
