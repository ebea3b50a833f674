"""The graph IR: :class:`Graph` holds :class:`Node` s that consume and produce :class:`Value` s.

The IR is SSA: every value has at most one producer (a node output, a graph input, or a constant weight),
and a node's list of uses is kept in step with the consumers' input lists by the mutation methods below,
so passes never edit ``Node.inputs`` by hand. ``Graph.nodes`` is kept in a topological order.

Subgraphs (the bodies of If/Loop/Scan) are Graphs stored in node attributes; their nodes may read values of
enclosing graphs directly (ONNX's outer-scope references), which is why a Value knows its owning graph.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import numpy as np

from .types import TensorType, Type, UNKNOWN


class Value:
    """An SSA value: a tensor (or sequence/optional) flowing along graph edges."""

    __slots__ = ("name", "type", "producer", "uses", "const", "graph", "__weakref__")

    def __init__(self, name: str, type: Type = UNKNOWN, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.const = const  # set for weights / initializers
        self.graph: Graph | None = None

    @property
    def is_constant(self) -> bool:
        return self.const is not None

    def replace_all_uses_with(self, other: "Value") -> None:
        for node, i in list(self.uses):
            node.set_input(i, other)
        if self.graph is not None:  # the owning graph may return this value
            self.graph.outputs = [other if o is self else o for o in self.graph.outputs]

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation. ``inputs`` may hold None for an omitted optional input, as may ``outputs``."""

    __slots__ = ("op_type", "domain", "inputs", "outputs", "attrs", "name", "opset", "graph", "meta")

    def __init__(self, op_type: str, domain: str = "", attrs: dict[str, Any] | None = None,
                 name: str = "", opset: int = 0):
        self.op_type = op_type
        self.domain = domain
        self.inputs: list[Value | None] = []
        self.outputs: list[Value | None] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.name = name
        self.opset = opset
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}  # free-form notes of passes (fusion group, device, ...)

    def set_input(self, index: int, value: Value | None) -> None:
        old = self.inputs[index]
        if old is not None:
            old.uses.remove((self, index))
        self.inputs[index] = value
        if value is not None:
            value.uses.append((self, index))

    def subgraphs(self) -> list["Graph"]:
        out = []
        for v in self.attrs.values():
            if isinstance(v, Graph):
                out.append(v)
            elif isinstance(v, list):
                out.extend(g for g in v if isinstance(g, Graph))
        return out

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain, self.op_type)

    def __repr__(self) -> str:
        return f"<Node {self.op_type} {self.name!r}>"


class Graph:
    """A function from ``inputs`` to ``outputs``. Weights live in ``initializers`` (Values with ``const``)."""

    def __init__(self, name: str = "graph", opsets: dict[str, int] | None = None, parent: "Graph | None" = None):
        self.name = name
        self.opsets: dict[str, int] = dict(opsets or {"": 17})
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.initializers: dict[str, Value] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- construction ---------------------------------------------------------------------------------------
    def fresh_name(self, hint: str) -> str:
        root = self.root()
        name = hint
        while name in root._names or not name:
            name = f"{hint}_{next(root._counter)}"
        root._names.add(name)
        return name

    def _adopt(self, value: Value) -> Value:
        value.graph = self
        self.root()._names.add(value.name)
        return value

    def add_input(self, name: str, type: Type = UNKNOWN) -> Value:
        v = self._adopt(Value(name, type))
        self.inputs.append(v)
        return v

    def add_initializer(self, name: str, array: np.ndarray) -> Value:
        v = self._adopt(Value(name, TensorType.of(array), const=array))
        self.initializers[name] = v
        return v

    def add_node(self, op_type: str, inputs: Iterable[Value | None], num_outputs: int = 1, *,
                 attrs: dict[str, Any] | None = None, domain: str = "", name: str = "",
                 output_names: Iterable[str | None] | None = None, index: int | None = None) -> Node:
        """Create a node, wire its inputs (recording uses) and create its output values.

        ``output_names`` entries that are None or "" leave that (optional) output absent.
        ``index`` inserts the node at that position of ``nodes`` instead of appending it.
        """
        node = Node(op_type, domain, attrs, name=name, opset=self.root_opset(domain))
        node.graph = self
        for i, v in enumerate(inputs):
            node.inputs.append(None)
            node.set_input(i, v)
        names = list(output_names) if output_names is not None else [None] * num_outputs
        if output_names is None:
            names = [self.fresh_name(f"{(name or op_type.lower())}_out{i}" if num_outputs > 1 else (name or op_type.lower()))
                     for i in range(num_outputs)]
        for out_name in names:
            if not out_name:
                node.outputs.append(None)
                continue
            v = self._adopt(Value(out_name))
            v.producer = node
            node.outputs.append(v)
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        return node

    def remove_node(self, node: Node) -> None:
        """Detach a node whose outputs are unused (or about to be replaced)."""
        for out in node.outputs:
            if out is not None and out.uses:
                raise ValueError(f"cannot remove {node}: output {out.name} still has uses")
        for i in range(len(node.inputs)):
            node.set_input(i, None)
        self.nodes.remove(node)
        node.graph = None

    def root(self) -> "Graph":
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def root_opset(self, domain: str = "") -> int:
        return self.root().opsets.get(domain, self.root().opsets.get("", 0))

    # -- queries --------------------------------------------------------------------------------------------
    def walk(self) -> Iterator[Node]:
        """Every node, including those of nested subgraphs (parents before their subgraphs' nodes)."""
        for node in self.nodes:
            yield node
            for sub in node.subgraphs():
                yield from sub.walk()

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.initializers.values()
        for node in self.nodes:
            yield from (o for o in node.outputs if o is not None)

    def value_by_name(self) -> dict[str, Value]:
        return {v.name: v for v in self.values()}

    def topological_sort(self) -> None:
        """Reorder ``nodes`` topologically (stable: keeps the existing order where it is already valid)."""
        import networkx as nx

        view = self.to_networkx()
        position = {n: i for i, n in enumerate(self.nodes)}
        self.nodes = list(nx.lexicographical_topological_sort(view, key=lambda n: position[n]))

    def to_networkx(self):
        """A networkx DiGraph view: one vertex per node, an edge per producer->consumer (edge attr: value).

        Uses inside subgraphs count as uses by the node that owns the subgraph.
        """
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for node in self.nodes:
            for v in node_reads(node):
                if v.producer is not None and v.producer.graph is self:
                    g.add_edge(v.producer, node, value=v)
        return g

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


def node_reads(node: Node) -> list[Value]:
    """Values a node reads: its inputs plus outer-scope values read by its subgraphs."""
    out = [v for v in node.inputs if v is not None]
    for sub in node.subgraphs():
        out.extend(captured_values(sub))
    return out


def captured_values(graph: Graph) -> list[Value]:
    """Values of enclosing graphs that ``graph`` (or its nested subgraphs) reads."""
    inner: set[int] = set()
    captured: dict[int, Value] = {}

    def visit(g: Graph) -> None:
        inner.update(id(v) for v in g.inputs)
        inner.update(id(v) for v in g.initializers.values())
        for n in g.nodes:
            inner.update(id(o) for o in n.outputs if o is not None)
        for n in g.nodes:
            for v in n.inputs:
                if v is not None and id(v) not in inner:
                    captured[id(v)] = v
            for sub in n.subgraphs():
                visit(sub)
        for v in g.outputs:
            if id(v) not in inner:
                captured[id(v)] = v

    visit(graph)
    return [v for k, v in captured.items() if k not in inner]
