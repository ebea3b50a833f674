"""Operator fusion: groups of producer -> consumer nodes become one ``graphc::FusedKernel`` each.

Requires: ``shapes_inferred``. Ensures: ``fused``. Invalidates: nothing (types are kept; the kernels' outputs
carry their members' types).

Algorithm (greedy producer-consumer merging over the topological order, in the spirit of TVM's FuseOps and
XLA's instruction fusion; :mod:`.grouping`): every node starts as its own group; each producer -> consumer edge
is a merge candidate, tried in topological order of the consumer (anchored producers first, then the most
recent); a merge happens when every rule below accepts the union of the two groups; refused edges are retried
until a sweep merges nothing. Groups of two or more nodes are then moved into FusedKernel nodes (:mod:`.kernels`);
a one-node group stays a plain node.

Classes (:mod:`.rules`): the registry's fusion class, except that inference-mode BatchNormalization,
Identity and Dropout count as elementwise, and nodes with subgraphs, side effects or random draws are opaque.

Rules that accept a merge (the kernel's ``rule`` attribute lists those used):

- ``elementwise-chain`` / ``injective-chain``: elementwise and injective (broadcast, reshape, transpose, ...)
  ops fuse with each other;
- ``complex+epilogue``: a Conv/MatMul/Gemm takes elementwise consumers (bias add, BN in inference, activation,
  residual add with its other operand from outside, clip); ``epilogue-operand``: zero-FLOP data-movement ops
  preparing an epilogue operand (Unsqueeze of a bias) may join too;
- ``reduction+prologue`` / ``reduction+epilogue``: a reduction takes its injective/elementwise producers and its
  elementwise/injective consumers;
- ``row-reduction``: reductions over the same axes of same-shaped tensors share a row-wise kernel, which makes a
  decomposed Softmax, LayerNorm (and, with no reduction, GELU) one kernel each.

Refusals (reason codes in the decision log):

- ``opaque``: control flow, data-dependent shapes, random ops, already fused kernels never fuse;
- ``graph_output``: a graph output (or a value a subgraph returns) must be written to memory;
- ``multi_consumer``: a value crossing the two groups is also read outside them (values used by several
  kernels are boundaries);
- ``complex_complex``: one kernel holds at most one Conv/MatMul/Gemm; ``complex_prologue``: nothing runs
  before a complex op in its kernel; ``complex_epilogue``/``complex_reduction``/``complex_side``: a complex op's
  epilogue is elementwise only;
- ``reduction_mismatch``: two reductions that do not share rows (and windowed pools never share);
- ``recompute``: a producer with FLOPs would be recomputed, because a windowed reduction (pooling, LRN) reads
  each element several times or because an elementwise consumer broadcasts a smaller producer (values computed
  after a reduction in a row-wise kernel are per-row values and are exempt); ``reread``: even a zero-FLOP producer
  is refused when the consumer re-reads each element more than ``fusion_max_reread`` (default 4) times;
- ``arity_cap``: a kernel reads at most ``fusion_max_inputs`` (default 8) distinct tensors, weights included;
- ``cycle``: merging would create a path that leaves the group and comes back (checked by reachability).

Only the root graph is fused: nodes inside subgraphs (If/Loop/Scan bodies) are left alone.

Options: ``fusion_max_inputs`` (8), ``fusion_max_reread`` (4), ``fusion_mode`` ("wrap": FusedKernel nodes, the
default; "annotate": leave the nodes in place and only set ``node.meta['fusion_group']``).

Decision log: one decision per kernel (members, ops, rule, kind, inputs, outputs, estimated bytes saved: the
members' bytes moved minus the kernel's, i.e. intermediates no longer written and re-read, and external inputs
read once), one per remaining boundary value (the producer, the consumers across the boundary, the reason
code(s) and text), and a summary with ``nodes_before``, ``kernels_after``, ``bytes_before``, ``bytes_after``
(bytes read + written by all kernels, symbolic dims as 1), ``groups``, ``fused_nodes`` and
``boundaries_by_reason``. Members carry ``meta['fusion_group']`` (the kernel's name) and the kernel node
``meta['fusion']`` (kind, rule, bytes saved).
"""

from __future__ import annotations

from collections import Counter

from ...analysis import concrete_bytes, node_cost, symbolic_dims_as_one
from ...errors import OptionError
from ...ir.graph import Graph
from ..base import Pass, PassContext
from ..registry import register_pass
from .grouping import Grouper, Grouping
from .kernels import group_io, wrap_group
from .rules import COMPLEX, ELEMENTWISE, REDUCTION, describe


def _kind(classes: list[str]) -> str:
    if COMPLEX in classes:
        return "complex+epilogue"
    if REDUCTION in classes:
        return "reduction"
    if all(c == ELEMENTWISE for c in classes):
        return "elementwise"
    return "injective"


def _bytes(values) -> int:
    return sum(concrete_bytes(v.type) for v in values)


@register_pass
class Fusion(Pass):
    """Operator fusion: elementwise/injective chains, reductions with their producers and consumers, and
    elementwise epilogues of Conv/MatMul/Gemm become one FusedKernel each; every decision is logged.

    Requires ``shapes_inferred``; ensures ``fused``. See the package docstring for the algorithm and rules.
    """

    name = "fusion"
    requires = frozenset({"shapes_inferred"})
    ensures = frozenset({"fused"})
    options = {"fusion_max_inputs": 8, "fusion_max_reread": 4, "fusion_mode": "wrap"}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        max_inputs = ctx.option("fusion_max_inputs", self.options["fusion_max_inputs"])
        max_reread = ctx.option("fusion_max_reread", self.options["fusion_max_reread"])
        mode = ctx.option("fusion_mode", self.options["fusion_mode"])
        if not isinstance(max_inputs, int) or isinstance(max_inputs, bool) or max_inputs < 1:
            raise OptionError(f"fusion_max_inputs must be a positive integer, got {max_inputs!r}")
        if not isinstance(max_reread, (int, float)) or max_reread < 1:
            raise OptionError(f"fusion_max_reread must be a number >= 1, got {max_reread!r}")
        if mode not in ("wrap", "annotate"):
            raise OptionError(f"fusion_mode must be 'wrap' or 'annotate', got {mode!r}")

        in_subgraphs = sum(1 for _ in graph.walk()) - len(graph.nodes)
        with symbolic_dims_as_one(graph):
            costs = {n: node_cost(n) for n in graph.nodes}
            nodes_before = len(graph.nodes)
            bytes_before = sum(c.bytes_read + c.bytes_written for c in costs.values())
            grouper = Grouper(graph, {n: c.flops for n, c in costs.items()}, max_inputs, float(max_reread))
            grouping = grouper.run()
            boundaries = self._log_boundaries(ctx, grouper, grouping)
        # rewrite outside the block: new values must copy the real (possibly symbolic) types
        kernels = self._apply(graph, ctx, grouper, grouping, costs, mode)
        if kernels and mode == "wrap":
            graph.topological_sort()
            with symbolic_dims_as_one(graph):
                bytes_after = sum(node_cost(n).bytes_read + node_cost(n).bytes_written for n in graph.nodes)
        else:
            bytes_after = bytes_before - sum(k["bytes_saved"] for k in kernels)
        kernels_after = len(graph.nodes) if mode == "wrap" else len(grouping.groups)
        self.log(ctx, f"{nodes_before} nodes -> {kernels_after} kernels ({len(kernels)} fused groups); bytes moved "
                      f"{bytes_before:,} -> {bytes_after:,}",
                 summary=True, nodes_before=nodes_before, kernels_after=kernels_after, bytes_before=int(bytes_before),
                 bytes_after=int(bytes_after), groups=len(kernels), fused_nodes=sum(len(k["nodes"]) for k in kernels),
                 boundaries_by_reason=dict(sorted(boundaries.items())), subgraph_nodes_left_alone=in_subgraphs)
        return bool(kernels)

    # ---------------------------------------------------------------------------------------------------------
    def _apply(self, graph, ctx, grouper: Grouper, grouping: Grouping, costs, mode: str) -> list[dict]:
        done = []
        for index, group in enumerate(g for g in grouping.groups if g.size > 1):
            members = sorted(group.members, key=grouper.pos.__getitem__)
            name = graph.fresh_name(f"fused{index}_{members[0].op_type.lower()}")
            kind = _kind([grouping.classes[m] for m in members])
            rule = ", ".join(group.rules)
            inputs, outputs = group_io(graph, members, grouper.pinned)
            produced = [o for m in members for o in m.outputs if o is not None]
            intermediates = [o for o in produced if all(o is not x for x in outputs)]
            before = sum(costs[m].bytes_read + costs[m].bytes_written for m in members)
            after = _bytes(inputs) + _bytes(outputs)
            record = {"group": name, "nodes": [m.name or m.op_type for m in members],
                      "ops": [m.op_type for m in members], "rule": rule, "kind": kind,
                      "inputs": len(inputs), "outputs": len(outputs),
                      "intermediates": len(intermediates), "intermediate_bytes": _bytes(intermediates),
                      "bytes_saved": int(before - after)}
            for m in members:
                m.meta["fusion_group"] = name
                m.meta["fusion_rule"] = rule
            if mode == "wrap":
                kernel = wrap_group(graph, members, name, kind, rule, grouper.pinned)
                kernel.meta["fusion"] = {k: record[k] for k in ("kind", "rule", "bytes_saved", "intermediates")}
            self.log(ctx, f"fused {len(members)} nodes into {name} ({kind}: {' + '.join(record['ops'])}) by "
                          f"{rule}; saves ~{record['bytes_saved']:,} bytes", **record)
            done.append(record)
        return done

    def _log_boundaries(self, ctx, grouper: Grouper, grouping: Grouping) -> Counter:
        """One decision per value that stays in memory between kernels, saying why each edge was not fused."""
        by_value: dict[int, dict] = {}
        for p, n, v in grouper.edges:
            if grouping.group_of[p] is grouping.group_of[n]:
                continue
            verdict = grouping.reasons.get((p, n, id(v)))
            entry = by_value.setdefault(id(v), {"value": v, "producer": p, "edges": []})
            code = verdict.code if verdict is not None else "not_tried"
            text = verdict.text if verdict is not None else "no rule was asked"
            entry["edges"].append((n, code, text))
        counts: Counter = Counter()
        for entry in by_value.values():
            v, p = entry["value"], entry["producer"]
            codes = sorted({c for _, c, _ in entry["edges"]})
            counts.update(codes)
            first = entry["edges"][0]
            consumers = [describe(n) for n, _, _ in entry["edges"]]
            self.log(ctx, f"boundary at {v.name} ({describe(p)} -> {', '.join(consumers)}): {first[2]}",
                     boundary=True, value=v.name, bytes=concrete_bytes(v.type),
                     producer=describe(p), consumers=consumers, reason=codes[0] if len(codes) == 1 else "+".join(codes),
                     why=[f"{describe(n)}: {code}: {text}" for n, code, text in entry["edges"]])
        return counts
