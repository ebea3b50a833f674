"""graphc's graph IR: values, nodes, graphs, their text form and their verifier."""

from .graph import Graph, Node, Value, captured_values, node_reads
from .printer import format_graph, format_node
from .types import (UNKNOWN, Dim, OptionalType, SequenceType, Shape, TensorType, Type, dtype_from_onnx,
                    dtype_to_onnx)
from .verify import verify

__all__ = [
    "Graph", "Node", "Value", "captured_values", "node_reads", "format_graph", "format_node", "UNKNOWN", "Dim",
    "OptionalType", "SequenceType", "Shape", "TensorType", "Type", "dtype_from_onnx", "dtype_to_onnx", "verify",
]
