"""Constant folding: evaluate, at compile time, the nodes whose inputs are all known, and keep their results
as weights.

Requires: ``shapes_inferred`` (``Shape``/``Size`` are folded from the static shapes the types state).
Ensures: nothing on its own (``simplified`` needs the whole simplify group). Invalidates: ``no_dead_code``
(folding ``Shape(x)`` drops a read of ``x``, whose producer may then be dead; run DCE after).

Rules:

- a node is folded when every input it has is a constant (``Value.const``: an initializer, or a result
  folded earlier in the same run) and at least one of its outputs is read (by a node, by a subgraph, or as a
  graph output; dead nodes are left to DCE). It is evaluated with the op registry's reference ``compute``
  (``OpContext(node, opdef)``), exactly what the reference backend would run, and each read output becomes an
  initializer *with the output's own name*, so a folded graph output keeps its name (the model's signature);
- ``Shape`` of a value whose type gives static dims for the requested range (``start``/``end``), and ``Size``
  of a value with a fully static shape, are folded too, whatever produces that value (graph inputs are
  checked against their declared shape at run time);
- never folded: ops whose definition says ``deterministic = False`` (random draws), ops with side effects
  (``OpDef.side_effects`` or ``node.meta["side_effects"]``), a ``Dropout`` that is not provably in inference
  mode, nodes holding subgraphs (If/Loop/Scan: their bodies are folded, the node itself is kept), ops outside
  the standard ONNX domains (graphc-internal ops such as fused kernels or transfers), ops unknown to the
  registry, and nodes whose outputs are not plain tensors (sequences, optionals);
- size cap: a node whose result would be larger than ``fold_limit_bytes`` (the pass option
  ``ctx.option("fold_limit_bytes")``, default 256 MiB) is kept, so a ``ConstantOfShape`` of a huge shape is
  not materialised at compile time. The cap is checked on the declared output type before evaluating and on
  the actual result after;
- a node whose evaluation fails (a data-dependent error) or whose result contradicts its declared type
  (dtype, or a static shape) is kept and the refusal is logged: folding must not change what the model does;
- weights that only folded nodes read are removed when nothing reads them any more (not those that share a
  name with a graph input, as in DCE), so chains of folds do not leave their intermediates behind;
- subgraphs are folded in place: a body node whose inputs are constants (its own weights or the enclosing
  graph's) becomes an initializer of that body. ``If`` with a constant condition is not inlined;
- one run reaches the fixed point (nodes are visited in topological order, so a fold feeds the next; the
  sweep repeats while a subgraph changed).

Each run logs one decision with the number of folded nodes by op type, the constants created and their
bytes, plus one decision for each node refused for a reason the user may care about (non-deterministic,
size cap, failed evaluation, type mismatch).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .base import Pass, PassContext
from .registry import register_pass

#: default of the ``fold_limit_bytes`` option: the largest constant a fold may create
DEFAULT_FOLD_LIMIT = 256 * 1024 * 1024

#: op domains whose ops are pure ONNX semantics (graphc-internal ops are never folded)
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


# -- helpers shared by the simplification passes ---------------------------------------------------------------

def fold_limit(ctx: PassContext) -> int:
    limit = ctx.option("fold_limit_bytes", None)
    return DEFAULT_FOLD_LIMIT if limit is None else int(limit)


def all_graphs(graph: Graph) -> list[Graph]:
    """``graph`` and every subgraph nested in it."""
    out = [graph]
    for node in graph.walk():
        out.extend(node.subgraphs())
    return out


def is_returned(value: Value, graphs: list[Graph] | None = None) -> bool:
    """Whether ``value`` is an output of its own graph or (directly) of any subgraph in ``graphs``."""
    if value.graph is not None and any(o is value for o in value.graph.outputs):
        return True
    return any(o is value for g in (graphs or ()) for o in g.outputs)


def is_read(value: Value | None, graphs: list[Graph] | None = None) -> bool:
    return value is not None and (bool(value.uses) or is_returned(value, graphs))


def replace_value(old: Value, new: Value, graphs: list[Graph] | None = None) -> None:
    """Make every reader of ``old`` read ``new``: node inputs, its graph's outputs and subgraph outputs."""
    old.replace_all_uses_with(new)
    for g in graphs or ():
        if any(o is old for o in g.outputs):
            g.outputs = [new if o is old else o for o in g.outputs]


def is_weight(value: Value) -> bool:
    g = value.graph
    return g is not None and value.const is not None and g.initializers.get(value.name) is value


def drop_unused_weights(values: list[Value | None], graphs: list[Graph] | None = None) -> list[str]:
    """Delete the initializers among ``values`` that nothing reads any more (DCE's rule for weights)."""
    dropped = []
    for v in values:
        if v is None or not is_weight(v) or v.uses or is_returned(v, graphs):
            continue
        g = v.graph
        if any(i.name == v.name for i in g.inputs):
            continue
        del g.initializers[v.name]
        dropped.append(v.name)
    return dropped


def dropout_is_inference(node: Node) -> bool:
    """True when a Dropout provably passes its data through (inference mode, or a constant ratio of 0)."""
    opset = node.opset or 1
    inputs = node.inputs
    if opset >= 12:
        ratio = inputs[1] if len(inputs) > 1 else None
        mode = inputs[2] if len(inputs) > 2 else None
        if mode is None:
            return True
        if mode.const is not None and not bool(np.asarray(mode.const).reshape(-1)[0]):
            return True
        return ratio is not None and ratio.const is not None and float(np.asarray(ratio.const).reshape(-1)[0]) == 0
    if opset >= 7:
        return True
    # opset < 7: training unless is_test (what the reference kernel does)
    return bool(node.attrs.get("is_test", 0)) or float(node.attrs.get("ratio", 0.5)) == 0


def is_nondeterministic(node: Node, opdef: Any) -> bool:
    """Random ops (``OpDef.deterministic`` False) and a Dropout that may be in training mode."""
    if opdef is not None and not getattr(opdef, "deterministic", True):
        return True
    return node.op_type == "Dropout" and node.domain in STANDARD_DOMAINS and not dropout_is_inference(node)


def has_side_effects(node: Node, opdef: Any) -> bool:
    return bool(node.meta.get("side_effects") or getattr(opdef, "side_effects", False))


def node_label(node: Node) -> str:
    return node.name or node.op_type


# -- the pass --------------------------------------------------------------------------------------------------

class _Run:
    """What one run of the pass collects for its decision log."""

    def __init__(self, ctx: PassContext, limit: int, graphs: list[Graph]):
        self.ctx = ctx
        self.limit = limit
        self.graphs = graphs
        self.folded: list[Node] = []
        self.created: list[str] = []
        self.bytes = 0
        self.refused: set[int] = set()
        self.weights_dropped: list[str] = []


@register_pass
class ConstantFolding(Pass):
    """Constant folding: evaluate nodes whose inputs are all constants (and Shape/Size of static shapes) once,
    at compile time, and replace them by weights.

    Requires ``shapes_inferred``; never folds random, side-effecting or subgraph-holding ops, and respects the
    ``fold_limit_bytes`` size cap. See the module docstring for the rules.
    """

    name = "constant_folding"
    requires = frozenset({"shapes_inferred"})
    invalidates = frozenset({"no_dead_code"})
    options = {"fold_limit_bytes": DEFAULT_FOLD_LIMIT}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from ..ops import registry  # noqa: F401  (make sure the op definitions are registered)

        state = _Run(ctx, fold_limit(ctx), all_graphs(graph))
        changed = self._fold_graph(graph, state)
        if state.folded:
            # A folded shape computation (Shape -> Gather -> Concat -> Reshape, as PyTorch exports attention)
            # turns unknown shapes into static ones: run the shape rules again so that later passes and the
            # code generators see them (a Reshape to a now-constant shape gets a static output type).
            from ..ops.inference import infer_types

            infer_types(graph)
            by_op = Counter(n.op_type for n in state.folded)
            self.log(ctx, f"folded {len(state.folded)} node(s) into {len(state.created)} constant(s) "
                          f"({state.bytes} bytes)",
                     by_op=dict(sorted(by_op.items())), constants=len(state.created), bytes=state.bytes,
                     nodes=[node_label(n) for n in state.folded], weights_dropped=len(state.weights_dropped))
        return changed

    def _fold_graph(self, graph: Graph, state: _Run) -> bool:
        changed = False
        progress = True
        while progress:
            progress = False
            for node in list(graph.nodes):
                if node.graph is not graph:
                    continue
                for sub in node.subgraphs():
                    progress |= self._fold_graph(sub, state)
                progress |= self._try_fold(graph, node, state)
            changed |= progress
        return changed

    # -- one node ----------------------------------------------------------------------------------------------
    def _refuse(self, state: _Run, node: Node, reason: str, **data: Any) -> bool:
        if id(node) not in state.refused:
            state.refused.add(id(node))
            self.log(state.ctx, f"kept {node.op_type} node {node_label(node)!r}: {reason}",
                     node=node_label(node), op=node.op_type, reason=reason, **data)
        return False

    def _try_fold(self, graph: Graph, node: Node, state: _Run) -> bool:
        from ..ops.registry import OpContext, lookup

        if node.subgraphs() or node.domain not in STANDARD_DOMAINS:
            return False
        if not any(is_read(o, state.graphs) for o in node.outputs):
            return False  # dead: DCE's business
        opdef = lookup(node.domain, node.op_type)
        if opdef is None:
            return False
        results = self._shape_query(node)
        if results is None:
            if not all(v is None or v.const is not None for v in node.inputs):
                return False
            if is_nondeterministic(node, opdef):
                return self._refuse(state, node, "non-deterministic op")
            if has_side_effects(node, opdef):
                return self._refuse(state, node, "op has side effects")
            for out in node.outputs:
                if is_read(out, state.graphs) and isinstance(out.type, TensorType):
                    size = out.type.nbytes()
                    if size is not None and size > state.limit:
                        return self._refuse(state, node, "result larger than fold_limit_bytes", bytes=size,
                                            limit=state.limit)
            try:
                with np.errstate(all="ignore"):
                    raw = opdef.compute(OpContext(node, opdef), *[v.const if v is not None else None
                                                                   for v in node.inputs])
            except Exception as exc:  # a data-dependent failure: leave it for run time, where it belongs
                return self._refuse(state, node, f"evaluation failed ({type(exc).__name__}: {exc})")
            results = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        arrays: list[tuple[Value, np.ndarray]] = []
        for i, out in enumerate(node.outputs):
            if not is_read(out, state.graphs):
                continue
            if i >= len(results):
                return self._refuse(state, node, "evaluation produced too few outputs")
            r = results[i]
            if isinstance(r, np.generic):
                r = np.asarray(r)
            if not isinstance(r, np.ndarray):
                return False  # sequences / optionals stay values
            if r.nbytes > state.limit:
                return self._refuse(state, node, "result larger than fold_limit_bytes", bytes=int(r.nbytes),
                                    limit=state.limit)
            t = out.type
            if isinstance(t, TensorType):
                if t.dtype is not None and r.dtype != t.dtype:
                    return self._refuse(state, node, f"result dtype {r.dtype} contradicts the declared {t}")
                if t.shape is not None and (len(t.shape) != r.ndim or any(
                        isinstance(d, int) and d != s for d, s in zip(t.shape, r.shape))):
                    return self._refuse(state, node, f"result shape {r.shape} contradicts the declared {t}")
            arrays.append((out, r))
        if not arrays:
            return False
        for out, r in arrays:
            init = graph.add_initializer(out.name, r)
            replace_value(out, init, state.graphs)
            state.created.append(out.name)
            state.bytes += int(r.nbytes)
        inputs = list(node.inputs)
        graph.remove_node(node)
        state.weights_dropped += drop_unused_weights(inputs, state.graphs)
        state.folded.append(node)
        return True

    @staticmethod
    def _shape_query(node: Node) -> list[np.ndarray] | None:
        """The result of Shape/Size read off the input's static type, or None."""
        if node.op_type not in ("Shape", "Size") or node.domain not in STANDARD_DOMAINS or not node.inputs:
            return None
        x = node.inputs[0]
        if x is None or x.const is not None or not isinstance(x.type, TensorType) or x.type.shape is None:
            return None  # a constant input goes through the generic path
        dims = x.type.shape
        if node.op_type == "Size":
            if not x.type.is_static:
                return None
            return [np.array(int(np.prod(dims, dtype=np.int64)), dtype=np.int64)]
        rank = len(dims)

        def clamp(v: int) -> int:
            return min(max(v + rank if v < 0 else v, 0), rank)

        start = clamp(int(node.attrs.get("start", 0) or 0))
        end = node.attrs.get("end")
        end = rank if end is None else clamp(int(end))
        picked = dims[start:max(start, end)]
        if not all(isinstance(d, int) for d in picked):
            return None
        return [np.array(picked, dtype=np.int64)]
