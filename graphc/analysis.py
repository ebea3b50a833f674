"""Static measures of a graph: FLOPs and bytes per node (from the registry's costs) and live memory.

Symbolic dimensions are taken as 1 here (a batch of one); the report says so.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass

from .ir.graph import Graph, Node, node_reads
from .ir.types import TensorType
from .ops import Cost, OpContext, lookup


def concrete_bytes(t) -> int:
    """Bytes of a tensor type with symbolic dims taken as 1 (0 when unknown)."""
    if not isinstance(t, TensorType) or t.shape is None or t.dtype is None:
        return 0
    n = 1
    for d in t.shape:
        n *= d if isinstance(d, int) else 1
    return n * t.dtype.itemsize


def node_cost(node: Node) -> Cost:
    opdef = lookup(node.domain, node.op_type)
    if opdef is None:
        return Cost()
    try:
        return opdef.cost(OpContext(node, opdef))
    except Exception:  # a cost rule should never stop a report; unknown shapes give no estimate
        return Cost()


def _concrete(t):
    if isinstance(t, TensorType) and t.shape is not None and not t.is_static:
        return TensorType(t.dtype, tuple(d if isinstance(d, int) else 1 for d in t.shape))
    return t


@contextlib.contextmanager
def symbolic_dims_as_one(graph: Graph):
    """Within the block, every value of ``graph`` whose shape has symbolic dims has them set to 1.

    Cost rules read static shapes only; estimating a model with a batch dim ``N`` as a batch of one is what
    the report promises. The original types are restored on exit.
    """
    saved = []
    for node in graph.walk():
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and isinstance(v.type, TensorType) and not v.type.is_static:
                saved.append((v, v.type))
                v.type = _concrete(v.type)
    try:
        yield
    finally:
        for v, t in reversed(saved):
            v.type = t


@dataclass
class MemoryEstimate:
    lower_bound_bytes: int  # max over the schedule of bytes live at once (LOAD)
    naive_bytes: int        # every input and intermediate in its own buffer, nothing reused
    weights_bytes: int
    peak_step: int          # index in the schedule where LOAD is reached


def memory_estimate(graph: Graph) -> MemoryEstimate:
    """Liveness over ``graph.nodes``: an intermediate lives from its producer to its last reader."""
    last_reader: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node_reads(node):
            last_reader[id(v)] = i
    end = len(graph.nodes)
    for v in graph.outputs:
        last_reader[id(v)] = end
    live = 0
    peak, peak_step, naive = 0, 0, 0
    dying: dict[int, int] = Counter()
    for v in graph.inputs:
        size = concrete_bytes(v.type)
        naive += size
        live += size
        dying[last_reader.get(id(v), -1)] += size
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            if out is None:
                continue
            size = concrete_bytes(out.type)
            naive += size
            live += size
            dying[max(last_reader.get(id(out), i), i)] += size
        if live > peak:
            peak, peak_step = live, i
        live -= dying.pop(i, 0)
    weights = sum(v.const.nbytes for v in graph.initializers.values() if hasattr(v.const, "nbytes"))
    return MemoryEstimate(peak, naive, weights, peak_step)


def is_fused_kernel(node: Node) -> bool:
    return node.domain == "graphc" and node.op_type == "FusedKernel"


def source_nodes(graph: Graph):
    """The model's own ops: every node, inside subgraphs and fused kernels too, but not the kernels themselves."""
    return (node for node in graph.walk() if not is_fused_kernel(node))


def flops_by_op(graph: Graph) -> Counter:
    """FLOPs per op type of the model's ops (a fused kernel's are counted once, under its members' types)."""
    out: Counter = Counter()
    with symbolic_dims_as_one(graph):
        for node in source_nodes(graph):
            out[node.op_type] += node_cost(node).flops
    return out


def count_ops(graph: Graph) -> Counter:
    return Counter(node.op_type for node in source_nodes(graph))


def bytes_moved(graph: Graph) -> int:
    """Bytes the kernels of the schedule read and write (inputs and outputs of each top-level node)."""
    with symbolic_dims_as_one(graph):
        return sum(c.bytes_read + c.bytes_written for c in map(node_cost, graph.nodes))


def parameter_count(graph: Graph) -> int:
    return sum(int(v.const.size) for v in graph.initializers.values() if hasattr(v.const, "size"))
