"""Common-subexpression elimination: compute each distinct expression once, and keep each distinct weight once.

Requires: nothing. Ensures: nothing on its own. Invalidates: nothing (merged nodes and weights are removed here).

Rules:

- identical weights are merged first: initializers of one graph with the same dtype, shape and bytes (grouped
  by dtype and shape, then hashed, then compared byte for byte) become one, the first in the graph's order;
  readers of the others read it. Weights that share a name with a graph input, weights that are graph
  outputs and object (string) arrays are left alone;
- two nodes are the same expression when they have the same op, domain and opset, the same attributes
  (with the op's defaults filled in, so a default spelled out equals one left out; numpy arrays compare by
  dtype, shape and value; floats by value with NaN equal to NaN; a subgraph equals only itself, the same
  object), the same inputs (the same Value objects, in order), the same present outputs and the same
  ``node.meta``. The later node's outputs are replaced by the earlier node's, and it is removed;
- only deterministic ops are merged: never an op whose definition says ``deterministic = False``, a Dropout
  that may be in training mode, an op with side effects (``OpDef.side_effects``/``node.meta["side_effects"]``),
  or an op unknown to the registry;
- a node whose output is an output of its graph is not merged away (its name is part of the signature);
- each graph (the main graph and every If/Loop/Scan body) has its own table: a body node is never merged with
  a node of another graph. Visiting nodes in topological order while replacing makes one sweep reach the
  fixed point (a merge makes the readers of both nodes identical before they are visited).

Commutative operands are not canonicalised (``Add(a, b)`` and ``Add(b, a)`` stay two nodes).

Each run logs one decision with the merged nodes by op type and the merged weights with the bytes saved.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from .base import Pass, PassContext
from .constant_folding import all_graphs, has_side_effects, is_nondeterministic, is_returned, node_label, replace_value
from .registry import register_pass


def freeze(value: Any) -> Any:
    """A hashable key for an attribute value that compares as the value does (arrays by dtype, shape, bytes)."""
    if isinstance(value, Graph):
        return ("graph", id(value))
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return ("ndarray-object", value.shape, tuple(freeze(v) for v in value.reshape(-1).tolist()))
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return freeze(np.asarray(value))
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), freeze(v)) for k, v in value.items())))
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))  # unknown and unhashable: equal only to itself
    return (type(value).__name__, value)


def _attrs(node: Node) -> dict:
    """The node's attributes over the ONNX schema's defaults for its opset (read like the node's own, as float32
    for float attributes, so a default spelled out compares equal to one left out)."""
    from ..ops.registry import _schema_defaults

    attrs = dict(_schema_defaults(node.domain if node.domain != "ai.onnx" else "", node.op_type, node.opset or 1))
    attrs.update(node.attrs)
    return attrs


@register_pass
class CommonSubexpressionElimination(Pass):
    """Common-subexpression elimination: merge nodes computing the same deterministic op on the same inputs,
    and identical weights.

    Requires nothing. See the module docstring for the rules.
    """

    name = "cse"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        graphs = all_graphs(graph)
        merged_nodes: list[Node] = []
        merged_weights: list[str] = []
        saved = 0
        for g in graphs:
            names, nbytes = self._merge_weights(g, graphs)
            merged_weights += names
            saved += nbytes
            merged_nodes += self._merge_nodes(g, graphs)
        if merged_weights:
            self.log(ctx, f"merged {len(merged_weights)} duplicate weight(s) ({saved} bytes)",
                     weights=merged_weights, bytes_saved=saved)
        if merged_nodes:
            by_op = Counter(n.op_type for n in merged_nodes)
            self.log(ctx, f"merged {len(merged_nodes)} duplicate node(s)", by_op=dict(sorted(by_op.items())),
                     nodes=[node_label(n) for n in merged_nodes])
        return bool(merged_nodes or merged_weights)

    # -- weights ---------------------------------------------------------------------------------------------
    @staticmethod
    def _merge_weights(graph: Graph, graphs: list[Graph]) -> tuple[list[str], int]:
        input_names = {v.name for v in graph.inputs}
        groups: dict[tuple, list[Value]] = {}
        for name, v in graph.initializers.items():
            a = v.const
            if (not isinstance(a, np.ndarray) or a.dtype == object or name in input_names
                    or is_returned(v, graphs)):
                continue
            groups.setdefault((a.dtype.str, a.shape), []).append(v)
        merged: list[str] = []
        saved = 0
        for members in groups.values():
            if len(members) < 2:
                continue
            by_digest: dict[bytes, list[Value]] = {}
            for v in members:
                data = np.ascontiguousarray(v.const).tobytes()
                keepers = by_digest.setdefault(hashlib.blake2b(data, digest_size=16).digest(), [])
                keeper = next((k for k in keepers if np.ascontiguousarray(k.const).tobytes() == data), None)
                if keeper is None:
                    keepers.append(v)
                    continue
                replace_value(v, keeper, graphs)
                del graph.initializers[v.name]
                merged.append(v.name)
                saved += int(v.const.nbytes)
        return merged, saved

    # -- nodes -----------------------------------------------------------------------------------------------
    @staticmethod
    def _key(node: Node) -> tuple | None:
        from ..ops.registry import lookup

        opdef = lookup(node.domain, node.op_type)
        if opdef is None or is_nondeterministic(node, opdef) or has_side_effects(node, opdef):
            return None
        return (node.domain, node.op_type, node.opset, freeze(_attrs(node)),
                tuple(id(v) if v is not None else None for v in node.inputs),
                tuple(o is not None for o in node.outputs), freeze(node.meta))

    def _merge_nodes(self, graph: Graph, graphs: list[Graph]) -> list[Node]:
        seen: dict[tuple, Node] = {}
        merged: list[Node] = []
        for node in list(graph.nodes):
            key = self._key(node)
            if key is None:
                continue
            keeper = seen.get(key)
            if keeper is None:
                seen[key] = node
                continue
            if any(o is not None and any(o is r for r in graph.outputs) for o in node.outputs):
                continue  # its output name is part of the signature
            for dup, kept in zip(node.outputs, keeper.outputs):
                if dup is not None:
                    replace_value(dup, kept, graphs)
            graph.remove_node(node)
            merged.append(node)
        return merged
