"""Ops internal to graphc: ``graphc::FusedKernel``, one kernel made of several nodes (written by the fusion pass).

A FusedKernel node holds its member nodes in the graph attribute ``body`` (a :class:`~graphc.ir.Graph` whose
``parent`` is the graph of the kernel). The body's inputs are the kernel's external inputs in the node's input
order (activations and weights alike, each once), its outputs the members' values that are read outside the
kernel (or are graph outputs). The members were *moved* into the body, not copied: every member exists once.

Attributes: ``body`` (required), ``kind`` ("elementwise", "injective", "reduction", "complex+epilogue") and
``rule`` (the fusion rule(s) that accepted the group), both free text for reports.

- ``infer``: the body outputs' types (checked against the node's arity);
- ``compute``: runs the body through ``ctx.run_subgraph`` (the reference executor provides it);
- ``cost``: FLOPs = the sum of the members' FLOPs; bytes read = the external inputs (once each), bytes written
  = the kernel's outputs. Intermediates stay on chip in a fused kernel, which is the point of fusing.
- fusion class OPAQUE: a fused kernel is never fused again.
"""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.types import TensorType
from .registry import REQUIRED, Cost, FusionClass, OpContext, OpDef, lookup, register


def _nbytes(v) -> int:
    if v is None or not isinstance(v.type, TensorType):
        return 0
    return v.type.nbytes() or 0


def body_flops(body: Graph) -> int:
    """Sum of the FLOPs of a body's nodes (nodes without a cost rule count 0)."""
    total = 0
    for node in body.nodes:
        opdef = lookup(node.domain, node.op_type)
        if opdef is None:
            continue
        try:
            total += int(opdef.cost(OpContext(node, opdef)).flops)
        except Exception:  # a cost rule must never stop a report
            continue
    return total


@register
class FusedKernel(OpDef):
    op_type = "FusedKernel"
    domain = "graphc"
    fusion = FusionClass.OPAQUE
    attrs = {"body": REQUIRED, "kind": "fused", "rule": ""}

    @staticmethod
    def _body(ctx: OpContext) -> Graph:
        body = ctx.attrs.get("body")
        if not isinstance(body, Graph):
            raise ctx.shape_error("needs a graph attribute 'body'")
        return body

    def infer(self, ctx):
        body = self._body(ctx)
        if len(body.inputs) != ctx.num_inputs:
            raise ctx.shape_error(f"the body takes {len(body.inputs)} inputs, the node has {ctx.num_inputs}")
        if len(body.outputs) != ctx.num_outputs:
            raise ctx.shape_error(f"the body returns {len(body.outputs)} values, the node has {ctx.num_outputs}")
        return [v.type for v in body.outputs]

    def compute(self, ctx, *inputs):
        return tuple(ctx.run_subgraph(self._body(ctx), list(inputs)))

    def cost(self, ctx):
        body = self._body(ctx)
        read = sum(_nbytes(v) for v in {id(v): v for v in ctx.node.inputs if v is not None}.values())
        written = sum(_nbytes(v) for v in ctx.node.outputs)
        return Cost(body_flops(body), read, written)
