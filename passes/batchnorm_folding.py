"""BatchNorm folding: fold an inference BatchNormalization into the Conv, ConvTranspose or Gemm before it.

Requires: nothing (it reads constants, not inferred types). Ensures: nothing. Invalidates: nothing.

With ``s = scale / sqrt(var + epsilon)`` and ``t = B - mean * s`` (per output channel, computed in float64 and
stored in the weight's dtype), ``BN(P(x))`` equals ``P'(x)`` where ``P'`` has

- Conv: ``W'[co, ...] = W[co, ...] * s[co]``, ``b' = b * s + t`` (``b = 0`` when absent);
- ConvTranspose: the weight is ``(Cin, Cout/group, k...)``, so output channel ``g * Cout/group + j`` scales
  ``W[g-th block of Cin, j, ...]``; ``b' = b * s + t``;
- Gemm (``Y = alpha * A' B' + beta * C``, opset >= 7): column ``n`` of ``op(B)`` is scaled by ``s[n]`` (rows of ``B``
  when ``transB=1``), and ``C' = beta * C * s + t`` with ``beta = 1`` (``C' = t`` when ``C`` is absent).

Rules:

- the BatchNormalization must be in inference form: one output (no running statistics), ``training_mode`` 0,
  ``spatial`` 1 (old opsets), and its scale, B, mean and var constants with one value per channel;
- its input X must be the only output of a Conv / ConvTranspose / Gemm of the same graph, X must have exactly
  one reader (the BatchNormalization) and must not be a graph output, and that producer's weight (and bias /
  C, when present) must be constants of a floating dtype;
- the producer gets *new* weights (``<weight>_bnfold``...): the old ones may be shared with other nodes, and
  are deleted only when nothing reads them any more;
- the BatchNormalization's readers then read the producer's output; when its output is a graph output, the
  producer's output takes over that name (the signature is kept);
- subgraphs (If/Loop/Scan bodies) get the same rule, each body on its own.

Each fold is logged (BatchNormalization and producer names, producer op, channels), and so is each refusal
where the producer *is* a Conv / ConvTranspose / Gemm (why the pattern did not apply).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir.graph import Graph, Node, Value
from .base import Pass, PassContext
from .constant_folding import (STANDARD_DOMAINS, all_graphs, drop_unused_weights, is_returned, node_label,
                               replace_value)
from .registry import register_pass

PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


class _Refused(Exception):
    pass


def _const(v: Value | None, what: str) -> np.ndarray | None:
    if v is None:
        return None
    if v.const is None:
        raise _Refused(f"{what} is not a constant")
    a = np.asarray(v.const)
    if a.dtype.kind != "f":
        raise _Refused(f"{what} has dtype {a.dtype}, not a floating type")
    return a


def _attrs(node: Node) -> dict[str, Any]:
    from ..ops.registry import lookup, resolve_attrs

    opdef = lookup(node.domain, node.op_type)
    return resolve_attrs(opdef, node) if opdef is not None else dict(node.attrs)


@register_pass
class BatchNormFolding(Pass):
    """BatchNorm folding: fold an inference BatchNormalization into the weights of the Conv, ConvTranspose or
    Gemm (constant weights, single reader) that feeds it.

    Requires nothing. See the module docstring for the formulas and rules.
    """

    name = "batchnorm_folding"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        graphs = all_graphs(graph)
        folded = 0
        for g in graphs:
            for node in list(g.nodes):
                if (node.graph is g and node.op_type == "BatchNormalization"
                        and node.domain in STANDARD_DOMAINS):
                    folded += self._try(g, node, ctx, graphs)
        return folded > 0

    def _try(self, graph: Graph, bn: Node, ctx: PassContext, graphs: list[Graph]) -> bool:
        x = bn.inputs[0] if bn.inputs else None
        producer = x.producer if x is not None else None
        if producer is None or producer.graph is not graph or producer.op_type not in PRODUCERS \
                or producer.domain not in STANDARD_DOMAINS:
            return False
        try:
            s, t, weights = self._plan(graph, bn, producer, graphs)
        except _Refused as why:
            self.log(ctx, f"kept {node_label(bn)!r}: {why}", bn=node_label(bn), producer=node_label(producer),
                     producer_op=producer.op_type, reason=str(why))
            return False
        # rewrite the producer's weights
        old_inputs = list(producer.inputs)
        for index, array in weights.items():
            old = producer.inputs[index] if index < len(producer.inputs) else None
            hint = (old.name if old is not None else f"{node_label(producer)}_bias") + "_bnfold"
            new = graph.add_initializer(graph.fresh_name(hint), array)
            while len(producer.inputs) <= index:
                producer.inputs.append(None)
            producer.set_input(index, new)
        if producer.op_type == "Gemm":
            producer.attrs["beta"] = 1.0
        # the BN's readers read the producer's output
        z = bn.outputs[0]
        rename = any(o is z for o in graph.outputs)
        replace_value(z, x, graphs)
        bn_inputs = list(bn.inputs)
        graph.remove_node(bn)
        if rename:
            x.name = z.name
        dropped = drop_unused_weights(old_inputs[1:] + bn_inputs[1:], graphs)
        self.log(ctx, f"folded {node_label(bn)!r} into {producer.op_type} {node_label(producer)!r}",
                 bn=node_label(bn), producer=node_label(producer), producer_op=producer.op_type,
                 channels=int(s.size), weights_dropped=dropped)
        return True

    def _plan(self, graph: Graph, bn: Node, producer: Node, graphs: list[Graph]):
        """(s, t, {producer input index: new array}) or _Refused with the reason."""
        x = bn.inputs[0]
        if sum(o is not None for o in bn.outputs) != 1 or bn.outputs[0] is None:
            raise _Refused("BatchNormalization in training form (several outputs)")
        attrs = _attrs(bn)
        if int(attrs.get("training_mode", 0) or 0):
            raise _Refused("BatchNormalization has training_mode=1")
        if int(attrs.get("spatial", 1)) != 1:
            raise _Refused("BatchNormalization has spatial=0")
        if len(bn.inputs) < 5 or any(v is None for v in bn.inputs[1:5]):
            raise _Refused("BatchNormalization lacks an input")
        if sum(o is not None for o in producer.outputs) != 1 or producer.outputs[0] is not x:
            raise _Refused("the producer has several outputs")
        if len(x.uses) != 1 or is_returned(x, graphs):
            raise _Refused(f"the producer's output {x.name!r} has other readers")
        scale, bias, mean, var = (_const(v, f"BatchNormalization {name}").astype(np.float64)
                                  for v, name in zip(bn.inputs[1:5], ("scale", "B", "mean", "var")))
        eps = float(attrs.get("epsilon", 1e-5))
        s = scale / np.sqrt(var + eps)
        t = bias - mean * s
        if len(producer.inputs) < 2:
            raise _Refused("the producer has no weight")
        op = producer.op_type
        pattrs = _attrs(producer)
        w = _const(producer.inputs[1], f"{op} weight")
        b = _const(producer.inputs[2] if len(producer.inputs) > 2 else None, f"{op} bias")
        dtype = w.dtype
        if b is not None and b.dtype != dtype:
            raise _Refused(f"{op} weight and bias dtypes differ")
        if op == "Gemm":
            if (producer.opset or 1) < 7:
                raise _Refused("Gemm before opset 7 (broadcast attribute)")
            if w.ndim != 2:
                raise _Refused("Gemm B is not 2-D")
            trans_b = int(pattrs.get("transB", 0) or 0)
            channels = w.shape[0] if trans_b else w.shape[1]
        elif op == "Conv":
            if w.ndim < 3:
                raise _Refused("Conv weight has rank < 3")
            channels = w.shape[0]
        else:  # ConvTranspose
            if w.ndim < 3:
                raise _Refused("ConvTranspose weight has rank < 3")
            channels = w.shape[1] * int(pattrs.get("group", 1) or 1)
        s, t = self._per_channel(s, t, channels)
        w64 = w.astype(np.float64)
        if op == "Gemm":
            new_w = w64 * (s[:, None] if trans_b else s[None, :])
            beta = float(pattrs.get("beta", 1.0))
            new_b = t if b is None else beta * b.astype(np.float64) * s + t
        elif op == "Conv":
            new_w = w64 * s.reshape((-1,) + (1,) * (w.ndim - 1))
            new_b = t if b is None else b.astype(np.float64).reshape(-1) * s + t
        else:
            group = int(pattrs.get("group", 1) or 1)
            cin, per_group = w.shape[0], w.shape[1]
            if cin % group:
                raise _Refused("ConvTranspose weight's Cin does not divide by group")
            blocks = w64.reshape((group, cin // group, per_group) + w.shape[2:])
            new_w = (blocks * s.reshape((group, 1, per_group) + (1,) * (w.ndim - 2))).reshape(w.shape)
            new_b = t if b is None else b.astype(np.float64).reshape(-1) * s + t
        if b is not None and op != "Gemm" and b.size != channels:
            raise _Refused(f"{op} bias has {b.size} values for {channels} channels")
        return s, t, {1: new_w.astype(dtype), 2: np.asarray(new_b).astype(dtype)}

    @staticmethod
    def _per_channel(s: np.ndarray, t: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for a in (s.reshape(-1), t.reshape(-1)):
            if a.size == 1:
                a = np.full(channels, a[0])
            elif a.size != channels:
                raise _Refused(f"BatchNormalization has {a.size} channels, the producer {channels}")
            out.append(a)
        return out[0], out[1]
