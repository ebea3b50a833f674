"""Host steps: one scheduled node run by the reference (numpy) kernels, for ops without a CUDA path.

The runtime copies the node's inputs (and the outer values its subgraphs read) from the device, calls
:meth:`HostStep.run`, and copies the results back. The emulation harness uses the same class as its
per-node oracle.
"""

from __future__ import annotations

import copy

import numpy as np

from ...errors import ExecutionError, GraphcError
from ...ir.graph import node_reads
from ...ops import OpContext, lookup
from ..reference.executor import _Env, _Program


class HostStep:
    def __init__(self, node):
        self.node = node
        opdef = lookup(node.domain, node.op_type)
        if opdef is None:
            raise ExecutionError(f"no reference kernel for {node.op_type}")
        self.ctx = OpContext(node, opdef)
        self.reads = node_reads(node)  # inputs, then outer-scope values read by subgraphs
        self._programs: dict[int, _Program] = {}

    def run(self, values: dict[int, np.ndarray]) -> list:
        """``values``: id(Value) -> array for every value in ``self.reads``; returns the node's outputs."""
        env = _Env()
        env.update(values)
        ctx = self.ctx
        if self.node.subgraphs():
            ctx = copy.copy(ctx)
            ctx.subgraph_runner = lambda g, xs: self._program(g).run(list(xs), env)
        args = [None if x is None else values[id(x)] for x in self.node.inputs]
        try:
            with np.errstate(all="ignore"):
                out = ctx.opdef.compute(ctx, *args)
        except GraphcError:
            raise
        except Exception as exc:  # noqa: BLE001 - a kernel failing on the data is the model's error
            raise ExecutionError(f"{self.node.op_type} node {self.node.name!r} failed on the host: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(out, (list, tuple)):
            out = [out]
        return [np.asarray(r) for r in out]

    def _program(self, graph) -> _Program:
        prog = self._programs.get(id(graph))
        if prog is None:
            prog = self._programs[id(graph)] = _Program(graph)
        return prog


def reference_values(graph, inputs: list) -> dict[int, np.ndarray]:
    """Every top-level value of ``graph`` (id -> array) computed by the reference kernels, node by node."""
    values: dict[int, np.ndarray] = {}
    for v, x in zip(graph.inputs, inputs):
        values[id(v)] = np.asarray(x)
    for v in graph.initializers.values():
        values[id(v)] = v.const
    for node in graph.nodes:
        for x in node_reads(node):
            if id(x) not in values and x.is_constant:
                values[id(x)] = x.const
        outs = HostStep(node).run(values)
        for o, r in zip(node.outputs, outs):
            if o is not None:
                values[id(o)] = r
    return values
