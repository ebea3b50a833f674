"""ONNX import: ModelProto -> graphc IR, typed, shape-inferred and verified.

What the importer guarantees to the passes after it:
- every node's op is in the registry (all unsupported ops are reported together, with their opsets);
- weights (initializers, sparse initializers, ``Constant`` nodes) are Values with ``const`` set;
- every value has a type: declared in the model, else from ONNX shape inference, refined by graphc's own rules;
- the weights are read once, into the graph: ONNX's checker and shape inference get a copy that declares the
  large ones by type (``skeleton.py``), so neither serialises them;
- subgraphs (If/Loop/Scan bodies) are Graphs in node attributes, their outer-scope reads wired to outer Values;
- the result passes ``graphc.ir.verify``.
Anything malformed raises a :class:`~graphc.errors.GraphcError` subclass, never another exception.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from ..errors import GraphcError, InvalidModelError, ModelLoadError, UnsupportedOpError
from ..ir.graph import Graph, Value
from ..ir.types import OptionalType, SequenceType, TensorType, Type, UNKNOWN, dtype_from_onnx
from ..ir.verify import verify
from ..ops import lookup
from ..ops.inference import infer_types
from ..ops.registry import attribute_value
from ..ops.tensor import constant_value
from .external_data import read_external_tensor
from .skeleton import checkable_copy

#: ONNX allows deep nesting of subgraphs; Python and protobuf do not, so deeper models are refused.
MAX_SUBGRAPH_DEPTH = 32
#: Refuse tensors declaring more elements than this (2^40): a typo or an attack, not a model.
MAX_ELEMENTS = 1 << 40
_TWO_GB = 2 ** 31


def load_model_proto(source: Any) -> tuple[onnx.ModelProto, str | None]:
    """Read a model from a path, bytes or a ModelProto; return it with the directory external data lives in."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse(bytes(source), "<bytes>"), None
    if isinstance(source, (str, os.PathLike)):
        model, base_dir, _ = read_model_file(source)
        return model, base_dir
    raise ModelLoadError(f"cannot load a model from a {type(source).__name__}: give a path, bytes or onnx.ModelProto")


def read_model_file(path: str | os.PathLike) -> tuple[onnx.ModelProto, str, str]:
    """An .onnx file's model, the directory its external data lives in, and the SHA-256 of the file's bytes
    (what :class:`graphc.sources.ModelFile` checks when it reads the file again)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path!r} is a directory, not an .onnx file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path!r}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    return _parse(data, path), os.path.dirname(os.path.abspath(path)), digest


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"model {where} is empty")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        if "depth" in str(exc).lower():
            raise ModelLoadError(f"model {where} nests messages too deep to parse (subgraphs nested beyond "
                                 "protobuf's limit)") from None
        raise ModelLoadError(f"model {where} is not a valid ONNX protobuf (truncated or corrupted?): {exc}") from None
    if not model.HasField("graph"):
        raise ModelLoadError(f"model {where} holds no graph: not an ONNX model, or truncated")
    return model


def _subgraph_depth(graph: onnx.GraphProto) -> int:
    """Nesting depth of subgraphs, computed without recursion (a hostile model may nest very deep)."""
    deepest, stack = 0, [(graph, 0)]
    while stack:
        g, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_SUBGRAPH_DEPTH:
            return depth
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append((attr.g, depth + 1))
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend((s, depth + 1) for s in attr.graphs)
    return deepest


def _all_nodes(graph: onnx.GraphProto):
    """Every node of a graph and its subgraphs, without recursion."""
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)


def opset_versions(model: onnx.ModelProto) -> dict[str, int]:
    """{domain: version} of the model's opset imports ('' for ai.onnx), refusing duplicates and unknown versions."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        if domain in versions:
            raise InvalidModelError(f"opset_import lists domain {domain or 'ai.onnx'!r} twice "
                                    f"(versions {versions[domain]} and {entry.version})")
        versions[domain] = int(entry.version)
    newest = onnx.defs.onnx_opset_version()
    if versions.get("", 0) > newest:
        raise InvalidModelError(f"model imports ai.onnx opset {versions['']}, newer than the newest this graphc "
                                f"knows ({newest})")
    if "" in versions and versions[""] < 1:
        raise InvalidModelError(f"model imports ai.onnx opset {versions['']}: opsets start at 1")
    return versions


def unsupported_ops(model: onnx.ModelProto) -> list[tuple[str, str, int]]:
    """Every (domain, op_type, opset) in the model (subgraphs included) that the registry lacks."""
    versions = opset_versions(model)
    local = {(f.domain, f.name) for f in model.functions}
    missing = set()
    for node in _all_nodes(model.graph):
        domain = "" if node.domain == "ai.onnx" else node.domain
        if node.op_type == "Constant" and domain == "" or (node.domain, node.op_type) in local:
            continue
        if lookup(domain, node.op_type) is None:
            missing.add((domain, node.op_type, versions.get(domain, 0)))
    return sorted(missing)


def check_structure(model: onnx.ModelProto) -> None:
    """What graphc checks before ONNX's checker sees the model: nesting depth, opset imports, and unsupported
    ops, all of them (the checker would stop at the first op it does not know)."""
    depth = _subgraph_depth(model.graph)
    if depth > MAX_SUBGRAPH_DEPTH:
        raise InvalidModelError(f"subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels; refusing the model")
    if not model.opset_import:
        raise InvalidModelError("model declares no opset_import; cannot tell which op versions it uses")
    missing = unsupported_ops(model)
    if missing:
        raise UnsupportedOpError(missing)


def onnx_view(model: onnx.ModelProto, base_dir: str | None) -> onnx.ModelProto | None:
    """The model as ONNX's checker and shape inference get it: large weights declared by type only
    (:func:`~graphc.frontend.skeleton.checkable_copy`), the remaining external tensors read in when that stays
    under 2 GB; None when even the copy is over 2 GB (protobuf's limit)."""
    view = inline_external_data(checkable_copy(model, base_dir), base_dir)
    return view if view.ByteSize() < _TWO_GB else None


def check_model_proto(model: onnx.ModelProto, base_dir: str | None = None) -> None:
    """Structural validation: :func:`check_structure`, then ONNX's checker on :func:`onnx_view`'s copy, its
    complaints turned into InvalidModelError."""
    check_structure(model)
    _run_checker(onnx_view(model, base_dir))


def _run_checker(view: onnx.ModelProto | None) -> None:
    if view is None or _external_tensors(view):  # the checker cannot read external data it was not given
        return
    try:
        onnx.checker.check_model(view)
    except onnx.checker.ValidationError as exc:
        message = " ".join(str(exc).split())[:600] or type(exc).__name__
        raise InvalidModelError(f"the model is not valid ONNX: {message}") from None
    except Exception as exc:  # the checker's C++ layer can raise other types on odd input
        raise InvalidModelError(f"the model is not valid ONNX: {exc}") from None


def _infer_onnx_types(view: onnx.ModelProto | None) -> dict[str, onnx.TypeProto]:
    """ONNX's own shape inference, on :func:`onnx_view`'s copy, as the seed for graphc's rules (skipped when
    ONNX cannot take the model whole)."""
    if view is None:
        return {}
    try:
        inferred = onnx.shape_inference.infer_shapes(view, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is a hint only; graphc's rules and the executor do not need it
        return {}
    out: dict[str, onnx.TypeProto] = {}

    def collect(g: onnx.GraphProto) -> None:
        for vi in g.value_info:
            out[vi.name] = vi.type
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for s in attr.graphs:
                        collect(s)
    collect(inferred.graph)
    return out


def type_from_proto(tp: onnx.TypeProto | None) -> Type:
    if tp is None:
        return UNKNOWN
    kind = tp.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, kind)
        dtype = None
        if tt.elem_type:
            try:
                dtype = dtype_from_onnx(tt.elem_type)
            except Exception:
                raise InvalidModelError(f"unknown tensor element type code {tt.elem_type}") from None
        shape = None
        if tt.HasField("shape"):
            dims = []
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    if d.dim_value < 0:
                        raise InvalidModelError(f"negative dimension {d.dim_value} in a declared shape")
                    dims.append(int(d.dim_value))
                elif d.dim_param:
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
            shape = tuple(dims)
            static = [d for d in dims if isinstance(d, int)]
            if static and float(np.prod([float(d) for d in static])) > MAX_ELEMENTS:
                raise InvalidModelError(f"declared shape {dims} has more than 2^40 elements")
        return TensorType(dtype, shape)
    if kind == "sequence_type":
        return SequenceType(type_from_proto(tp.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(type_from_proto(tp.optional_type.elem_type))
    if kind is None:
        return UNKNOWN
    raise InvalidModelError(f"values of ONNX type {kind!r} are not supported")


def tensor_to_array(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray:
    """A TensorProto's value as numpy, checking its size against its dims."""
    if any(d < 0 for d in tensor.dims):
        raise InvalidModelError(f"tensor {tensor.name!r} has negative dims {list(tensor.dims)}")
    if tensor.data_type not in onnx.TensorProto.DataType.values() or tensor.data_type == 0:
        raise InvalidModelError(f"tensor {tensor.name!r} has unknown data_type {tensor.data_type}")
    if int(np.prod([float(d) for d in tensor.dims])) > MAX_ELEMENTS:
        raise InvalidModelError(f"tensor {tensor.name!r} declares {list(tensor.dims)} elements: too large")
    try:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return read_external_tensor(tensor, base_dir)
        return numpy_helper.to_array(tensor)
    except GraphcError:
        raise
    except Exception as exc:
        raise InvalidModelError(f"tensor {tensor.name!r} (dims {list(tensor.dims)}) cannot be decoded: {exc}") from None


def sparse_to_array(sparse: onnx.SparseTensorProto, base_dir: str | None) -> np.ndarray:
    values = tensor_to_array(sparse.values, base_dir)
    indices = tensor_to_array(sparse.indices, base_dir).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    try:
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            dense[tuple(indices.T)] = values
        else:  # linearised indices
            dense.reshape(-1)[indices] = values
    except (IndexError, ValueError) as exc:
        raise InvalidModelError(f"sparse tensor {sparse.values.name!r} has indices outside {dims}: {exc}") from None
    return dense


def _check_text(text, what: str) -> None:
    # protobuf hands back bytes for strings that are not valid UTF-8
    if not isinstance(text, str):
        raise InvalidModelError(f"a {what} in the model is not valid UTF-8: {text!r}")


class _Importer:
    def __init__(self, model: onnx.ModelProto, base_dir: str | None, view: onnx.ModelProto | None):
        self.model = model
        self.base_dir = base_dir
        self.opsets = opset_versions(model)
        if "" not in self.opsets:
            self.opsets[""] = 1
        self.seed_types = _infer_onnx_types(view)
        self.unsupported: list[tuple[str, str, int]] = []

    def run(self) -> Graph:
        graph = Graph(self.model.graph.name or "main", opsets=self.opsets)
        self._fill(graph, self.model.graph, outer={}, top=True)
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported)
        return graph

    def _fill(self, graph: Graph, proto: onnx.GraphProto, outer: dict[str, Value], top: bool) -> None:
        scope: dict[str, Value] = dict(outer)
        declared = {vi.name: vi.type for vi in list(proto.value_info) + list(proto.output)}

        def define(name: str, value_maker) -> Value:
            _check_text(name, "value name")
            if name in scope and scope[name].graph is graph:
                raise InvalidModelError(f"value {name!r} is defined more than once in graph {proto.name!r}")
            v = value_maker()
            scope[name] = v
            return v

        for init in proto.initializer:
            array = tensor_to_array(init, self.base_dir)
            define(init.name, lambda: graph.add_initializer(init.name, array))
        for sparse in proto.sparse_initializer:
            array = sparse_to_array(sparse, self.base_dir)
            define(sparse.values.name, lambda: graph.add_initializer(sparse.values.name, array))
        for vi in proto.input:
            if vi.name in graph.initializers:  # IR<4 lists weights as inputs too: they stay weights
                continue
            t = type_from_proto(vi.type)
            define(vi.name, lambda: graph.add_input(vi.name, t))

        for index, node_proto in enumerate(proto.node):
            self._add_node(graph, node_proto, index, scope, define, declared)

        for vo in proto.output:
            if vo.name not in scope:
                raise InvalidModelError(f"graph output {vo.name!r} of {proto.name!r} is produced by no node")
            graph.outputs.append(scope[vo.name])

    def _add_node(self, graph: Graph, node_proto: onnx.NodeProto, index: int, scope, define, declared) -> None:
        domain = "" if node_proto.domain == "ai.onnx" else node_proto.domain
        for text, what in [(node_proto.op_type, "op type"), (node_proto.name, "node name"),
                           (node_proto.domain, "domain"), *((n, "value name") for n in node_proto.output)]:
            _check_text(text, what)
        label = node_proto.name or f"{node_proto.op_type}_{index}"
        if domain not in self.opsets:
            raise InvalidModelError(f"node {label!r} uses domain {domain!r}, which the model does not import")
        inputs = []
        for name in node_proto.input:
            if not name:
                inputs.append(None)
            elif name in scope:
                inputs.append(scope[name])
            else:
                raise InvalidModelError(f"node {label!r} ({node_proto.op_type}) reads {name!r}, which nothing "
                                        "defines before it (dangling input or nodes out of order)")
        attrs = {a.name: self._attribute(a, graph, scope, label) for a in node_proto.attribute}
        if node_proto.op_type == "Constant" and domain == "" and len(node_proto.output) == 1:
            array = self._constant_value(attrs, label)
            name = node_proto.output[0]
            define(name, lambda: graph.add_initializer(name, array))
            return
        if lookup(domain, node_proto.op_type) is None:
            self.unsupported.append((domain, node_proto.op_type, self.opsets[domain]))

        for name in node_proto.output:
            if name and name in scope and scope[name].graph is graph:
                raise InvalidModelError(f"node {label!r} redefines value {name!r} (ONNX graphs are SSA)")
        node = graph.add_node(node_proto.op_type, inputs, attrs=attrs, domain=domain, name=label,
                              output_names=list(node_proto.output))
        for out in node.outputs:
            if out is None:
                continue
            tp = declared.get(out.name) or self.seed_types.get(out.name)
            out.type = type_from_proto(tp) if tp is not None else UNKNOWN
            scope[out.name] = out

    def _constant_value(self, attrs: dict, label: str) -> np.ndarray:
        if len(attrs) != 1:
            raise InvalidModelError(f"Constant node {label!r} must have exactly one value attribute, has {sorted(attrs)}")
        try:
            return constant_value(attrs)
        except (ValueError, TypeError) as exc:
            raise InvalidModelError(f"Constant node {label!r}: {exc}") from None

    def _attribute(self, attr: onnx.AttributeProto, graph: Graph, scope, label: str) -> Any:
        kind = attr.type
        A = onnx.AttributeProto
        if attr.ref_attr_name:
            raise InvalidModelError(f"node {label!r}: attribute references are only valid inside functions")
        if kind == A.GRAPH:
            return self._subgraph(attr.g, graph, scope)
        if kind == A.GRAPHS:
            return [self._subgraph(g, graph, scope) for g in attr.graphs]
        if kind == A.TENSOR:
            return tensor_to_array(attr.t, self.base_dir)
        if kind == A.TENSORS:
            return [tensor_to_array(t, self.base_dir) for t in attr.tensors]
        if kind == A.SPARSE_TENSOR:
            return sparse_to_array(attr.sparse_tensor, self.base_dir)
        if kind == A.UNDEFINED:
            raise InvalidModelError(f"node {label!r}: attribute {attr.name!r} has no type")
        try:
            return attribute_value(helper.get_attribute_value(attr))
        except Exception as exc:
            raise InvalidModelError(f"node {label!r}: attribute {attr.name!r} cannot be read: {exc}") from None

    def _subgraph(self, proto: onnx.GraphProto, parent: Graph, scope) -> Graph:
        sub = Graph(proto.name or "subgraph", opsets=self.opsets, parent=parent)
        self._fill(sub, proto, outer=scope, top=False)
        return sub


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found, stack = [], [model.graph]
    while stack:
        g = stack.pop()
        found.extend(t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        for node in g.node:
            for attr in node.attribute:
                for t in [attr.t, *attr.tensors]:
                    if t.data_location == onnx.TensorProto.EXTERNAL:
                        found.append(t)
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return found


def inline_external_data(model: onnx.ModelProto, base_dir: str | None) -> onnx.ModelProto:
    """A copy of ``model`` with external tensors read in (safely), when the result stays under 2 GB.

    ONNX's checker and shape inference only see a model whole; models too large for that keep their external
    references (and are checked by graphc's rules only). Used on :func:`onnx_view`'s copy, where the large
    weights are already declared by type only, so what is read here is small.
    """
    if not _external_tensors(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    total = copy.ByteSize()
    for tensor in _external_tensors(copy):
        array = tensor_to_array(tensor, base_dir)
        total += array.nbytes
        if total >= _TWO_GB:
            return model
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return copy


def import_onnx(model: onnx.ModelProto, base_dir: str | None = None, *, check: bool = True) -> Graph:
    """Build a verified, typed graphc Graph from an ONNX model.

    The weights are read once, into the graph (external data straight from its files); ONNX's checker and
    shape inference get :func:`onnx_view`'s copy, which declares the large ones by type instead of holding them.
    """
    if check:
        check_structure(model)
    view = onnx_view(model, base_dir)
    if check:
        _run_checker(view)
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise InvalidModelError(f"cannot inline the model's local functions: {exc}") from None
        view = onnx_view(model, base_dir)  # inference must see the nodes the importer sees
    graph = _Importer(model, base_dir, view).run()
    infer_types(graph)
    verify(graph)
    return graph


def load_onnx(source: Any) -> Graph:
    """Path, bytes or ModelProto -> Graph."""
    model, base_dir = load_model_proto(source)
    return import_onnx(model, base_dir)
