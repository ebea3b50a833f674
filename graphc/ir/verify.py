"""``verify(graph)``: the invariants every pass must keep.

- SSA: every value name is defined once across the graph and its subgraphs;
- def-use consistency: ``Value.uses`` matches exactly the nodes' input lists, ``Value.producer`` and the
  producer's outputs agree;
- topological order: a node's inputs are defined earlier in ``nodes`` (or in an enclosing graph);
- no dangling uses: every input and output refers to a value defined in scope;
- types: constants match their declared type, and every op is known to the registry.
"""

from __future__ import annotations

import numpy as np

from ..errors import VerificationError
from .graph import Graph
from .types import TensorType


def verify(graph: Graph, *, check_ops: bool = True) -> None:
    problems: list[str] = []
    _verify(graph, set(), set(), problems, check_ops)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise VerificationError(f"IR of graph {graph.name!r} is invalid: " + "; ".join(problems[:10]) + more)


def _verify(graph: Graph, outer_scope: set[int], all_names: set[str], problems: list[str], check_ops: bool) -> None:
    scope = set(outer_scope)

    def define(v, where: str) -> None:
        if v.name in all_names:
            problems.append(f"value name {v.name!r} defined twice ({where})")
        all_names.add(v.name)
        scope.add(id(v))

    for v in graph.inputs:
        define(v, "graph input")
    for name, v in graph.initializers.items():
        define(v, "initializer")
        if v.const is None:
            problems.append(f"initializer {name!r} has no data")
        elif isinstance(v.type, TensorType) and v.type.shape is not None and tuple(v.const.shape) != v.type.shape:
            problems.append(f"initializer {name!r} has shape {v.const.shape}, declared {v.type}")

    if check_ops:
        from ..ops import registry

    for node in graph.nodes:
        if node.graph is not graph:
            problems.append(f"{node} does not point back to graph {graph.name!r}")
        if check_ops and registry.lookup(node.domain, node.op_type) is None:
            problems.append(f"{node} has an op unknown to the registry")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in scope:
                problems.append(f"{node} input {i} ({v.name!r}) is not defined before it (dangling or out of order)")
            if (node, i) not in v.uses:
                problems.append(f"{node} input {i} ({v.name!r}) is missing from that value's uses")
        for sub in node.subgraphs():
            _verify(sub, scope, all_names, problems, check_ops)
        for j, out in enumerate(node.outputs):
            if out is None:
                continue
            if out.producer is not node:
                problems.append(f"output {out.name!r} of {node} names another producer")
            define(out, f"output {j} of {node}")
    for node in graph.nodes:
        for out in node.outputs:
            if out is None:
                continue
            for user, i in out.uses:
                if i >= len(user.inputs) or user.inputs[i] is not out:
                    problems.append(f"stale use of {out.name!r} by {user}")
    for v in graph.outputs:
        if id(v) not in scope:
            problems.append(f"graph output {v.name!r} is not defined in the graph")
    for v in graph.initializers.values():
        if v.const is not None and not isinstance(v.const, (np.ndarray, list)):
            problems.append(f"initializer {v.name!r} holds {type(v.const).__name__}, not an array")
