"""The op registry: one :class:`OpDef` per op, and everything the rest of graphc asks about an op.

An OpDef states, in one place:

- ``attrs``: attribute defaults (a plain value, :data:`REQUIRED`, or :class:`ByOpset` when the default
  changed between opsets). Attributes an OpDef does not list fall back to the ONNX schema's default for the
  node's opset, so the OpDef only needs to list what it relies on;
- ``infer(ctx)``: the shape/dtype rule (returning None leaves the importer's types in place);
- ``compute(ctx, *inputs)``: the numpy reference implementation, the oracle for every backend;
- ``cost(ctx)``: FLOPs and bytes read/written;
- ``fusion``: the class the fusion pass reads.

Adding an op is writing one class (or one call to a helper such as :func:`unary`) in a module of this
package and decorating it with :func:`register`.
"""

from __future__ import annotations

import enum
import functools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ExecutionError, ShapeInferenceError
from ..ir.graph import Graph, Node
from ..ir.types import TensorType, Type


class FusionClass(str, enum.Enum):
    ELEMENTWISE = "elementwise"  # out[i] = f(in_0[i], in_1[i], ...) after broadcasting
    INJECTIVE = "injective"      # each output element is read from one input element (transpose, slice, ...)
    REDUCTION = "reduction"      # out reduces a set of input elements (ReduceSum, Softmax statistics, ...)
    COMPLEX = "complex"          # Conv/MatMul/Gemm: elementwise consumers fuse into their epilogue
    OPAQUE = "opaque"            # no fusion: control flow, sorting, data-dependent shapes, sequences


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


@dataclass(frozen=True)
class ByOpset:
    """An attribute default that depends on the opset: ``ByOpset({1: 0, 13: 1})`` means 0 before 13."""

    defaults: dict

    def at(self, opset: int) -> Any:
        value = None
        for since in sorted(self.defaults):
            if opset >= since:
                value = self.defaults[since]
        return value


@dataclass
class Cost:
    flops: int = 0
    bytes_read: int = 0
    bytes_written: int = 0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes_read + other.bytes_read,
                    self.bytes_written + other.bytes_written)


class OpContext:
    """What an op sees of the node it runs for: resolved attributes, opset, input types and constants.

    At execution time the executor also provides :meth:`run_subgraph` for control-flow ops.
    """

    def __init__(self, node: Node, opdef: "OpDef"):
        self.node = node
        self.opdef = opdef
        self.opset = node.opset
        self.attrs = resolve_attrs(opdef, node)
        self.subgraph_runner: Callable[[Graph, list], list] | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return default if value is None else value

    # -- for shape inference ---------------------------------------------------------------------------------
    @property
    def input_types(self) -> list[Type | None]:
        return [v.type if v is not None else None for v in self.node.inputs]

    def input_type(self, i: int) -> TensorType | None:
        if i >= len(self.node.inputs) or self.node.inputs[i] is None:
            return None
        t = self.node.inputs[i].type
        return t if isinstance(t, TensorType) else None

    def const(self, i: int) -> np.ndarray | None:
        """The constant value of input i when it is known at compile time (a weight), else None."""
        if i >= len(self.node.inputs) or self.node.inputs[i] is None:
            return None
        return self.node.inputs[i].const

    @property
    def num_inputs(self) -> int:
        return len(self.node.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.node.outputs)

    # -- for execution ---------------------------------------------------------------------------------------
    def run_subgraph(self, graph: Graph, inputs: list) -> list:
        if self.subgraph_runner is None:
            raise ExecutionError(f"{self.node.op_type} needs a subgraph runner, and none was provided")
        return self.subgraph_runner(graph, inputs)

    def fail(self, message: str) -> ExecutionError:
        """An ExecutionError naming this node, for data-dependent failures (bad indices...)."""
        return ExecutionError(f"{self.node.op_type} node {self.node.name!r}: {message}")

    def shape_error(self, message: str) -> ShapeInferenceError:
        return ShapeInferenceError(f"{self.node.op_type} node {self.node.name!r}: {message}")


class OpDef:
    """Base class of op definitions. Subclasses set the class attributes and override what they need."""

    op_type: str = ""
    domain: str = ""
    fusion: FusionClass = FusionClass.OPAQUE
    attrs: dict[str, Any] = {}
    #: FLOPs per output element, for the default cost
    flops_per_element: float = 0.0
    #: the lowest opset this definition implements
    min_opset: int = 1
    #: True for ops whose effect is more than their outputs (none in ONNX inference); DCE keeps them
    side_effects: bool = False
    #: False for ops whose outputs differ from call to call (random draws): never folded, merged or cached
    deterministic: bool = True

    def infer(self, ctx: OpContext) -> list[Type | None] | None:
        return None

    def compute(self, ctx: OpContext, *inputs):
        raise NotImplementedError(f"{self.op_type} has no reference implementation")

    def cost(self, ctx: OpContext) -> Cost:
        read = sum((v.type.nbytes() or 0) for v in ctx.node.inputs if v is not None and isinstance(v.type, TensorType))
        outs = [v for v in ctx.node.outputs if v is not None and isinstance(v.type, TensorType)]
        written = sum((v.type.nbytes() or 0) for v in outs)
        elements = sum((v.type.numel() or 0) for v in outs)
        return Cost(int(self.flops_per_element * elements), read, written)


REGISTRY: dict[tuple[str, str], OpDef] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: add one instance of the op definition to the registry."""
    key = (cls.domain, cls.op_type)
    if not cls.op_type:
        raise ValueError(f"{cls.__name__} has no op_type")
    if key in REGISTRY:
        raise ValueError(f"op {key} registered twice ({type(REGISTRY[key]).__name__} and {cls.__name__})")
    REGISTRY[key] = cls()
    return cls


def lookup(domain: str, op_type: str) -> OpDef | None:
    if domain == "ai.onnx":
        domain = ""
    return REGISTRY.get((domain, op_type))


def all_ops() -> list[OpDef]:
    return [REGISTRY[k] for k in sorted(REGISTRY)]


@functools.lru_cache(maxsize=None)
def _schema_defaults(domain: str, op_type: str, opset: int) -> dict[str, Any]:
    import onnx
    from onnx import helper

    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # unknown op or domain: the OpDef's own defaults are all there is
        return {}
    out = {}
    for name, attr in schema.attributes.items():
        if attr.default_value is not None and attr.default_value.name:
            out[name] = attribute_value(helper.get_attribute_value(attr.default_value))
    return out


def attribute_value(value: Any) -> Any:
    """Normalise an attribute value: bytes -> str, tuples -> lists (graphs and tensors pass through)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [attribute_value(v) for v in value]
    return value


def resolve_attrs(opdef: OpDef, node: Node) -> dict[str, Any]:
    """The node's attributes with defaults filled in, for the node's opset."""
    resolved = dict(_schema_defaults(opdef.domain, opdef.op_type, node.opset or 1))
    for name, default in opdef.attrs.items():
        if isinstance(default, ByOpset):
            default = default.at(node.opset)
        if default is not REQUIRED:
            resolved[name] = default
    resolved.update(node.attrs)
    missing = [n for n, d in opdef.attrs.items() if d is REQUIRED and n not in node.attrs]
    if missing:
        raise ShapeInferenceError(f"{node.op_type} node {node.name!r} lacks required attribute(s) {missing}")
    return resolved


# -- shape rules shared by many ops ------------------------------------------------------------------------------

def normalize_axis(axis: int, rank: int, fail) -> int:
    """``axis`` in [0, rank), counting negative axes from the back; ``fail(message)`` builds the error raised."""
    if not -rank <= axis < rank:
        raise fail(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Sequence[int], rank: int, fail) -> list[int]:
    out = [normalize_axis(int(a), rank, fail) for a in axes]
    if len(set(out)) != len(out):
        raise fail(f"axes {list(axes)} repeat an axis")
    return out



def broadcast_shapes(*shapes: Sequence | None) -> tuple | None:
    """Numpy-style broadcast of shapes that may hold symbolic (str) or unknown (None) dims."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for axis in range(rank):
        dims = [s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0]
        known = {d for d in dims if d != 1}
        if not known:
            out.append(1)
        elif len(known) == 1:
            out.append(known.pop())
        else:
            ints = {d for d in known if isinstance(d, int)}
            if len(ints) > 1:
                raise ShapeInferenceError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
            out.append(ints.pop() if ints else None)
    return tuple(out)


def elementwise_infer(ctx: OpContext, out_dtype: np.dtype | None = None) -> list[Type | None]:
    types = [t for t in (ctx.input_type(i) for i in range(ctx.num_inputs)) if t is not None]
    if not types:
        return [None]
    shape = broadcast_shapes(*[t.shape for t in types])
    dtype = out_dtype if out_dtype is not None else types[0].dtype
    return [TensorType(dtype, shape)]


# -- helpers that define whole families of simple ops ------------------------------------------------------------

def _make_elementwise(op_type: str, fn: Callable, flops: float, out_dtype, attrs: dict, min_opset: int,
                      module: str) -> type[OpDef]:
    def compute(self, ctx, *inputs):
        result = fn(ctx, *inputs) if self._wants_ctx else fn(*inputs)
        return np.asarray(result) if out_dtype is None else np.asarray(result, dtype=out_dtype)

    def infer(self, ctx):
        return elementwise_infer(ctx, None if out_dtype is None else np.dtype(out_dtype))

    import inspect

    params = list(inspect.signature(fn).parameters)
    cls = type(op_type, (OpDef,), {
        "op_type": op_type, "fusion": FusionClass.ELEMENTWISE, "flops_per_element": flops, "attrs": attrs,
        "min_opset": min_opset, "compute": compute, "infer": infer,
        "_wants_ctx": bool(params) and params[0] == "ctx", "__module__": module,
    })
    return register(cls)


def elementwise(op_type: str, fn: Callable, *, flops: float = 1, out_dtype=None, attrs: dict | None = None,
                min_opset: int = 1) -> type[OpDef]:
    """Register an elementwise op computed by ``fn(*inputs)`` (or ``fn(ctx, *inputs)`` to read attributes).

    ``out_dtype`` fixes the result dtype (bool for comparisons); by default it is the first input's.
    """
    # the caller's frame alone: inspect.stack() reads every frame's source and cost 1 s per import of graphc
    # (6-14 s in a Ray worker, whose sys.modules is large)
    module = sys._getframe(1).f_globals.get("__name__", __name__)
    return _make_elementwise(op_type, fn, flops, out_dtype, attrs or {}, min_opset, module)
