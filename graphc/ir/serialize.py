"""The post-pass IR as JSON plus raw weights: ``graph_to_json`` / ``graph_from_json``. No pickle.

``graph_to_json(graph)`` returns ``(doc, weights)``: ``doc`` is a JSON-able dict and ``weights`` maps a weight id
(``"w0"``, ``"w1"``...) to the numpy array it stands for (initializers, tensor attributes). The artifact writer
(graphc/artifact.py) stores those arrays as raw little-endian bytes; ``graph_from_json(doc, weights)`` rebuilds a
Graph that :func:`~graphc.ir.verify.verify` accepts and that runs identically.

Document layout (one per graph; subgraphs nest inside attributes)::

    {"name", "opsets": {domain: version},
     "inputs": [{"name", "type"}], "initializers": [{"name", "type", "const": <attr value>}],
     "nodes": [{"op", "domain", "name", "opset", "inputs": [name | null],
                "outputs": [{"name", "type"} | null], "attrs": {name: <attr value>}, "meta": {...}}],
     "outputs": [name]}

Types: ``{"kind": "tensor", "dtype": "float32" | "bfloat16" | ... | null, "shape": null | [int | str | null]}``
(a str dim is symbolic, null unknown), ``{"kind": "seq" | "opt", "elem": <type> | null}``.
Attribute values: int, float, str, bool, null and lists of them as themselves; tagged objects for the rest:
``{"$w": id}`` an array (a weight), ``{"$g": {...}}`` a subgraph, ``{"$typeproto": base64}`` an ONNX TypeProto,
``{"$bytes": base64}``, ``{"$dict": {...}}``. Values are referred to by name; a name a graph does not define is
looked up in the enclosing graphs (outer-scope reads of If/Loop/Scan bodies and fused kernels). Node ``meta``
keeps the entries that are plain JSON and drops the others.

Errors in a document (unknown dtype, dangling value name, malformed entry) raise :class:`SerializationError`
naming the place; unknown ops are left to ``verify``.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from .graph import Graph, Node, Value
from .types import OptionalType, SequenceType, TensorType, Type

__all__ = ["SerializationError", "graph_to_json", "graph_from_json", "dtype_by_name", "type_to_json",
           "type_from_json"]


class SerializationError(ValueError):
    """A graph that cannot be written, or a document that does not describe a valid graph."""


# -- dtypes ---------------------------------------------------------------------------------------------------
_NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                 "float16", "float32", "float64", "complex64", "complex128", "object")
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e4m3",
              "float8_e3m4", "float8_e4m3b11fnuz", "float8_e8m0fnu", "float6_e2m3fn", "float6_e3m2fn",
              "float4_e2m1fn", "int2", "uint2", "int4", "uint4")


def dtype_by_name(name: str) -> np.dtype:
    """The numpy dtype named ``name`` (numpy's own, or one of ml_dtypes'); SerializationError otherwise."""
    if name in _NUMPY_DTYPES:
        return np.dtype(name)
    if name in _ML_DTYPES:
        import ml_dtypes

        dt = getattr(ml_dtypes, name, None)
        if dt is not None:
            return np.dtype(dt)
    raise SerializationError(f"unknown dtype {name!r}")


def _dtype_name(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "US":  # fixed-width strings become object (ONNX STRING) arrays
        return "object"
    name = dtype.name
    if name not in _NUMPY_DTYPES and name not in _ML_DTYPES:
        raise SerializationError(f"dtype {dtype!r} cannot be serialized")
    return name


# -- types ----------------------------------------------------------------------------------------------------
def type_to_json(t: Type | None) -> dict | None:
    if t is None:
        return None
    if isinstance(t, TensorType):
        shape = None if t.shape is None else [d if isinstance(d, (str, type(None))) else int(d) for d in t.shape]
        return {"kind": "tensor", "dtype": None if t.dtype is None else _dtype_name(t.dtype), "shape": shape}
    if isinstance(t, SequenceType):
        return {"kind": "seq", "elem": type_to_json(t.elem)}
    if isinstance(t, OptionalType):
        return {"kind": "opt", "elem": type_to_json(t.elem)}
    raise SerializationError(f"type {t!r} cannot be serialized")


def type_from_json(doc: Any) -> Type | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise SerializationError(f"a type must be an object, got {doc!r}")
    kind = doc.get("kind")
    if kind == "tensor":
        dtype = doc.get("dtype")
        shape = doc.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or not all(
                    d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                    for d in shape):
                raise SerializationError(f"bad tensor shape {shape!r}")
            shape = tuple(shape)
        return TensorType(None if dtype is None else dtype_by_name(dtype), shape)
    if kind == "seq":
        return SequenceType(type_from_json(doc.get("elem")))
    if kind == "opt":
        return OptionalType(type_from_json(doc.get("elem")))
    raise SerializationError(f"unknown type kind {kind!r}")


# -- writing --------------------------------------------------------------------------------------------------
class _Writer:
    def __init__(self):
        self.weights: dict[str, np.ndarray] = {}
        self._ids: dict[int, str] = {}

    def weight(self, array: np.ndarray) -> str:
        wid = self._ids.get(id(array))
        if wid is None:
            wid = self._ids[id(array)] = f"w{len(self.weights)}"
            self.weights[wid] = array
        return wid

    def value(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            return float(x)
        if isinstance(x, np.bool_):
            return bool(x)
        if isinstance(x, np.ndarray):
            _dtype_name(x.dtype)  # refuse what cannot be stored now, not at load
            return {"$w": self.weight(x)}
        if isinstance(x, Graph):
            return {"$g": self.graph(x)}
        if isinstance(x, (list, tuple)):
            return [self.value(v, where) for v in x]
        if isinstance(x, bytes):
            return {"$bytes": base64.b64encode(x).decode("ascii")}
        if isinstance(x, dict) and all(isinstance(k, str) for k in x):
            return {"$dict": {k: self.value(v, where) for k, v in x.items()}}
        if type(x).__name__ == "TypeProto" and hasattr(x, "SerializeToString"):
            return {"$typeproto": base64.b64encode(x.SerializeToString()).decode("ascii")}
        raise SerializationError(f"{where}: a {type(x).__name__} cannot be serialized")

    def graph(self, g: Graph) -> dict:
        nodes = []
        for node in g.nodes:
            where = f"node {node.name or node.op_type!r} ({node.op_type})"
            nodes.append({
                "op": node.op_type, "domain": node.domain, "name": node.name, "opset": int(node.opset),
                "inputs": [None if v is None else v.name for v in node.inputs],
                "outputs": [None if v is None else {"name": v.name, "type": type_to_json(v.type)}
                            for v in node.outputs],
                "attrs": {k: self.value(v, f"{where} attribute {k!r}") for k, v in node.attrs.items()},
                "meta": _plain_meta(node.meta),
            })
        return {
            "name": g.name,
            "opsets": {str(k): int(v) for k, v in g.opsets.items()},
            "inputs": [{"name": v.name, "type": type_to_json(v.type)} for v in g.inputs],
            "initializers": [{"name": v.name, "type": type_to_json(v.type),
                              "const": self.value(v.const, f"initializer {v.name!r}")}
                             for v in g.initializers.values()],
            "nodes": nodes,
            "outputs": [v.name for v in g.outputs],
        }


def _plain(x: Any) -> Any:
    """``x`` as plain JSON (numpy scalars and tuples converted); TypeError when it is not."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            raise TypeError("non-string keys")
        return {k: _plain(v) for k, v in x.items()}
    raise TypeError(type(x).__name__)


def _plain_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[str(k)] = _plain(v)
        except TypeError:
            continue  # free-form notes that are not JSON (objects of a pass) are not kept
    return out


def graph_to_json(graph: Graph) -> tuple[dict, dict[str, np.ndarray]]:
    """``(document, {weight id: array})`` for ``graph`` and its subgraphs."""
    writer = _Writer()
    doc = writer.graph(graph)
    return doc, writer.weights


# -- reading --------------------------------------------------------------------------------------------------
class _Scope:
    def __init__(self, parent: "_Scope | None" = None):
        self.values: dict[str, Value] = {}
        self.parent = parent

    def define(self, value: Value, where: str) -> None:
        scope = self
        while scope is not None:
            if value.name in scope.values:
                raise SerializationError(f"value {value.name!r} is defined twice ({where})")
            scope = scope.parent
        self.values[value.name] = value

    def lookup(self, name: Any, where: str) -> Value:
        if not isinstance(name, str):
            raise SerializationError(f"{where}: a value name must be a string, got {name!r}")
        scope = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        raise SerializationError(f"{where} refers to value {name!r}, which is not defined before it "
                                 f"(dangling value name)")


def _obj(doc: Any, where: str) -> dict:
    if not isinstance(doc, dict):
        raise SerializationError(f"{where} must be an object, got {type(doc).__name__}")
    return doc


def _list(doc: Any, where: str) -> list:
    if not isinstance(doc, list):
        raise SerializationError(f"{where} must be a list, got {type(doc).__name__}")
    return doc


def _str(doc: Any, where: str) -> str:
    if not isinstance(doc, str):
        raise SerializationError(f"{where} must be a string, got {doc!r}")
    return doc


class _Reader:
    def __init__(self, weights: dict[str, Any]):
        self.weights = weights

    def value(self, x: Any, parent: Graph, scope: _Scope, where: str) -> Any:
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return x
        if isinstance(x, list):
            return [self.value(v, parent, scope, where) for v in x]
        if isinstance(x, dict) and len(x) == 1:
            (tag, body), = x.items()
            if tag == "$w":
                if not isinstance(body, str) or body not in self.weights:
                    raise SerializationError(f"{where}: unknown weight {body!r}")
                return self.weights[body]
            if tag == "$g":
                return self.graph(body, parent, scope, f"{where} subgraph")
            if tag == "$bytes":
                return base64.b64decode(_str(body, where), validate=True)
            if tag == "$dict":
                return {k: self.value(v, parent, scope, where) for k, v in _obj(body, where).items()}
            if tag == "$typeproto":
                import onnx

                return onnx.TypeProto.FromString(base64.b64decode(_str(body, where), validate=True))
        raise SerializationError(f"{where}: unrecognised value {str(x)[:80]}")

    def graph(self, doc: Any, parent: Graph | None, outer: _Scope | None, where: str = "graph") -> Graph:
        doc = _obj(doc, where)
        name = doc.get("name", "graph")
        opsets = _obj(doc.get("opsets", {}), f"{where} opsets")
        if not all(isinstance(v, int) for v in opsets.values()):
            raise SerializationError(f"{where}: opset versions must be integers")
        g = Graph(str(name), opsets=opsets or None, parent=parent)
        where = f"graph {g.name!r}"
        scope = _Scope(outer)
        for i, entry in enumerate(_list(doc.get("inputs", []), f"{where} inputs")):
            entry = _obj(entry, f"{where} input {i}")
            v = g.add_input(_str(entry.get("name"), f"{where} input {i} name"), type_from_json(entry.get("type")))
            scope.define(v, f"{where} input")
        for i, entry in enumerate(_list(doc.get("initializers", []), f"{where} initializers")):
            entry = _obj(entry, f"{where} initializer {i}")
            vname = _str(entry.get("name"), f"{where} initializer {i} name")
            const = self.value(entry.get("const"), g, scope, f"initializer {vname!r}")
            if not isinstance(const, (np.ndarray, list)):
                raise SerializationError(f"initializer {vname!r} holds no array")
            t = type_from_json(entry.get("type"))
            if t is None:
                t = TensorType.of(const) if isinstance(const, np.ndarray) else SequenceType(None)
            v = g._adopt(Value(vname, t, const=const))
            g.initializers[vname] = v
            scope.define(v, f"{where} initializer")
        for i, entry in enumerate(_list(doc.get("nodes", []), f"{where} nodes")):
            self.node(_obj(entry, f"{where} node {i}"), g, scope, f"{where} node {i}")
        g.outputs = [scope.lookup(n, f"{where} output") for n in _list(doc.get("outputs", []), f"{where} outputs")]
        return g

    def node(self, doc: dict, g: Graph, scope: _Scope, where: str) -> None:
        op = _str(doc.get("op"), f"{where} op")
        domain = _str(doc.get("domain", ""), f"{where} domain")
        name = _str(doc.get("name", ""), f"{where} name")
        where = f"node {name or op!r} ({op})"
        opset = doc.get("opset", 0)
        if not isinstance(opset, int) or isinstance(opset, bool):
            raise SerializationError(f"{where}: opset must be an integer")
        inputs = [None if n is None else scope.lookup(n, f"{where} input {i}")
                  for i, n in enumerate(_list(doc.get("inputs", []), f"{where} inputs"))]
        attrs = {_str(k, f"{where} attribute name"): self.value(v, g, scope, f"{where} attribute {k!r}")
                 for k, v in _obj(doc.get("attrs", {}), f"{where} attrs").items()}
        meta = _obj(doc.get("meta", {}), f"{where} meta")
        node = Node(op, domain, attrs, name=name, opset=opset)
        node.graph = g
        node.meta = dict(meta)
        for i, v in enumerate(inputs):
            node.inputs.append(None)
            node.set_input(i, v)
        for j, out in enumerate(_list(doc.get("outputs", []), f"{where} outputs")):
            if out is None:
                node.outputs.append(None)
                continue
            out = _obj(out, f"{where} output {j}")
            v = g._adopt(Value(_str(out.get("name"), f"{where} output {j} name"), type_from_json(out.get("type"))
                               or TensorType(None, None)))
            v.producer = node
            node.outputs.append(v)
            scope.define(v, f"output {j} of {where}")
        g.nodes.append(node)


def graph_from_json(doc: dict, weights: dict[str, Any]) -> Graph:
    """Rebuild the Graph ``graph_to_json`` described; ``weights`` maps weight ids to arrays."""
    return _Reader(weights).graph(doc, None, None)

