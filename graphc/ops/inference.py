"""Type and shape inference over a whole graph with the registry's rules.

The ONNX importer seeds value types from the model (declared types and ONNX's own shape inference); this pass
then applies graphc's rule of every op, in topological order. A rule's result wins where it knows more (a static
or symbolic dim where the seed had none); where it returns None the seed stays.
"""

from __future__ import annotations

from ..errors import GraphcError, ShapeInferenceError
from ..ir.graph import Graph
from ..ir.types import TensorType, Type
from .registry import OpContext, lookup
from .type_constraints import check_input_types


def merge_types(seed: Type, rule: Type | None) -> Type:
    """The more specific of two types for the same value."""
    if rule is None:
        return seed
    if not isinstance(seed, TensorType) or not isinstance(rule, TensorType):
        return rule if seed is None or getattr(seed, "dtype", 1) is None else seed
    dtype = rule.dtype if rule.dtype is not None else seed.dtype
    if rule.shape is None:
        return TensorType(dtype, seed.shape)
    if seed.shape is None or len(seed.shape) != len(rule.shape):
        return TensorType(dtype, rule.shape)
    dims = []
    for s, r in zip(seed.shape, rule.shape):
        if isinstance(s, int) and isinstance(r, int) and s != r:
            raise ShapeInferenceError(f"declared shape {seed} contradicts the computed {rule}")
        # a static dim beats a symbolic one, which beats an unknown one
        if isinstance(r, int) or r is not None and not isinstance(s, int):
            dims.append(r)
        else:
            dims.append(s)
    return TensorType(dtype, tuple(dims))


def infer_node(node, *, in_subgraph: bool = False) -> None:
    opdef = lookup(node.domain, node.op_type)
    if opdef is None:
        return
    try:
        check_input_types(node)
        ctx = OpContext(node, opdef)
        types = opdef.infer(ctx)
    except Exception as exc:
        # A branch that is never taken may hold code that cannot be typed for this model's shapes (an If on
        # the rank, say); whether it runs is only known at run time, so subgraphs keep their seed types.
        if in_subgraph:
            return
        if isinstance(exc, GraphcError):
            if node.name and node.name in str(exc):
                raise
            try:
                named = type(exc)(f"{node.op_type} node {node.name!r}: {exc}")
            except TypeError:  # an error class with a structured constructor names its subject itself
                raise exc from None
            raise named from exc
        # a rule tripping over a malformed node: report it as the model's fault
        raise ShapeInferenceError(
            f"{node.op_type} node {node.name!r}: cannot infer output types ({type(exc).__name__}: {exc})") from exc
    if not types:
        return
    for out, t in zip(node.outputs, types):
        if out is not None:
            try:
                out.type = merge_types(out.type, t)
            except ShapeInferenceError as exc:
                raise ShapeInferenceError(f"{node.op_type} node {node.name!r}, output {out.name!r}: {exc}") from None


def infer_types(graph: Graph) -> None:
    """Apply every op's shape rule over ``graph`` and its subgraphs, in order."""
    for node in graph.nodes:
        for sub in node.subgraphs():
            infer_types(sub)
        infer_node(node, in_subgraph=graph.parent is not None)
