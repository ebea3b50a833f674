"""A text form of the IR that reads like code::

    graph resnet50(%data: float32[N,3,224,224]) -> (%prob: float32[N,1000]) {
      %conv1 = Conv(%data, %w0, %b0) {kernel_shape=[7,7], strides=[2,2]}  : float32[N,64,112,112]
      ...
    }
"""

from __future__ import annotations

import numpy as np

from .graph import Graph, Node


def _attr(v) -> str:
    if isinstance(v, Graph):
        return f"<graph {v.name}>"
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return f"tensor({v.dtype.name}, {v.tolist()})"
        return f"tensor({v.dtype.name}{list(v.shape)})"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_attr(x) for x in v) + "]"
    if isinstance(v, bytes):
        return repr(v.decode("utf-8", "replace"))
    return repr(v) if isinstance(v, str) else str(v)


def format_node(node: Node) -> str:
    outs = ", ".join(f"%{o.name}" if o is not None else "_" for o in node.outputs)
    ins = ", ".join(f"%{v.name}" if v is not None else "_" for v in node.inputs)
    op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    attrs = ""
    if node.attrs:
        attrs = " {" + ", ".join(f"{k}={_attr(v)}" for k, v in sorted(node.attrs.items())) + "}"
    types = ", ".join(str(o.type) for o in node.outputs if o is not None)
    return f"{outs} = {op}({ins}){attrs}  : {types}"


def format_graph(graph: Graph, indent: str = "") -> str:
    sig_in = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    sig_out = ", ".join(f"%{v.name}: {v.type}" for v in graph.outputs)
    lines = [f"{indent}graph {graph.name}({sig_in}) -> ({sig_out}) {{"]
    for v in graph.initializers.values():
        lines.append(f"{indent}  %{v.name}: {v.type} = weight")
    for node in graph.nodes:
        lines.append(f"{indent}  {format_node(node)}")
        for sub in node.subgraphs():
            lines.append(format_graph(sub, indent + "    "))
    lines.append(f"{indent}}}")
    return "\n".join(lines)
