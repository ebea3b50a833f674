"""Ops internal to graphc that move a tensor between devices: ``graphc::Send`` and ``graphc::Recv``.

The partitioning pass (passes/partitioning.py) puts one pair on every cut edge: ``Send(x) -> wire`` on the
producing stage's device, ``Recv(wire) -> x'`` on the reading stage's device, and the readers of ``x`` on that
stage read ``x'``. Attributes (both ops): ``src``/``dst`` (device names), ``src_stage``/``dst_stage`` (ints).

- ``infer``: the input's type (a transfer changes where a tensor lives, not what it is);
- ``compute``: the identity. In one process there is nothing to move, so a partitioned graph still runs, and
  gives the same results, on any single-process executor. The multi-device runtime
  (graphc/runtime/multidevice.py) never runs these nodes: it cuts the graph at them and moves the bytes itself;
- ``cost``: no FLOPs; Send reads the tensor, Recv writes it (the time is the link's, see graphc/costmodel.py);
- fusion class OPAQUE: never fused.
"""

from __future__ import annotations

from ..ir.types import TensorType
from .registry import REQUIRED, Cost, FusionClass, OpDef, register


class _Transfer(OpDef):
    domain = "graphc"
    fusion = FusionClass.OPAQUE
    attrs = {"src": REQUIRED, "dst": REQUIRED, "src_stage": -1, "dst_stage": -1}

    def infer(self, ctx):
        if ctx.num_inputs != 1 or ctx.num_outputs != 1:
            raise ctx.shape_error("takes one input and gives one output")
        v = ctx.node.inputs[0]
        return [v.type if v is not None else None]

    def compute(self, ctx, x):
        return x

    @staticmethod
    def _nbytes(ctx) -> int:
        v = ctx.node.inputs[0] if ctx.node.inputs else None
        return (v.type.nbytes() or 0) if v is not None and isinstance(v.type, TensorType) else 0


@register
class Send(_Transfer):
    op_type = "Send"

    def cost(self, ctx):
        return Cost(0, self._nbytes(ctx), 0)


@register
class Recv(_Transfer):
    op_type = "Recv"

    def cost(self, ctx):
        return Cost(0, 0, self._nbytes(ctx))
