"""Shared plumbing of the op unit tests: one node in a fresh graph, its OpContext, and the op's compute or infer.

    node_ctx(op, inputs, attrs, opset=, consts=, num_outputs=, domain=)  -> OpContext for one node
    infer(op, inputs, **node_ctx kwargs)                                 -> the op's inferred output types
    run(op, *arrays, attrs=, opset=, num_outputs=, domain=, subgraph_runner=) -> what the op's compute returns

``opset`` is keyword-only and has no default: a test file binds its own once, e.g.
``run = functools.partial(util.run, opset=18)`` (a call can still override it).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from graphc.ir import UNKNOWN, Graph, TensorType
from graphc.ops import OpContext, lookup


def node_ctx(op_type: str, inputs: list, attrs: dict[str, Any] | None = None, *, opset: int,
             consts: dict[int, Any] | None = None, num_outputs: int = 1, domain: str = "",
             domain_opset: int = 1) -> OpContext:
    """An OpContext for a single ``op_type`` node in a fresh graph.

    Each entry of ``inputs`` is a Type (a graph input of that type), an ndarray (an initializer, so that
    ``ctx.const(i)`` sees it) or None (an omitted optional input). ``consts`` ({index: array}) makes those
    inputs initializers whatever ``inputs`` holds there (it may be shorter). The graph imports the default
    domain at ``opset`` and a custom ``domain`` at ``domain_opset``.
    """
    opsets = {"": opset, domain: domain_opset} if domain else {"": opset}
    g = Graph("t", opsets)
    consts = consts or {}
    values = []
    for i in range(max(len(inputs), max(consts, default=-1) + 1)):
        v = consts[i] if i in consts else inputs[i] if i < len(inputs) else None
        if v is None:
            values.append(None)
        elif isinstance(v, (np.ndarray, np.generic, list, int, float, bool)):
            values.append(g.add_initializer(f"c{i}", np.asarray(v)))
        else:
            values.append(g.add_input(f"x{i}", v))
    node = g.add_node(op_type, values, num_outputs, attrs=attrs, domain=domain)
    return OpContext(node, lookup(domain, op_type))


def infer(op_type: str, inputs: list, attrs: dict[str, Any] | None = None, **kw) -> list | None:
    """The op's shape/type inference for a node built by :func:`node_ctx` (same arguments)."""
    ctx = node_ctx(op_type, inputs, attrs, **kw)
    return ctx.opdef.infer(ctx)


def run(op_type: str, *arrays, attrs: dict[str, Any] | None = None, opset: int, num_outputs: int = 1,
        domain: str = "", subgraph_runner: Callable | None = None) -> Any:
    """Run the op's reference ``compute`` on ``arrays`` and return its result unchanged.

    Each array becomes a graph input of its own type (not a constant); None is an omitted input; any other
    value (a Python list standing for a sequence) is an input of unknown type. ``subgraph_runner`` stands in
    for the executor's subgraph runner (control-flow ops).
    """
    types = [None if a is None else TensorType.of(a) if isinstance(a, (np.ndarray, np.generic)) else UNKNOWN
             for a in arrays]
    ctx = node_ctx(op_type, types, attrs, opset=opset, num_outputs=num_outputs, domain=domain)
    ctx.subgraph_runner = subgraph_runner
    return ctx.opdef.compute(ctx, *arrays)
