"""Tensor (intra-op) splitting: one weight-heavy Conv/Gemm/MatMul kernel becomes k slices plus a Concat.

Pipeline stages over whole kernels cannot hold a kernel bigger than a device's memory (VGG-19's first FC layer
is 411 MB, 75% of the model's weights), nor balance stages finer than the kernel at a stage boundary. This pass
cuts such kernels along their output channels so that the partitioner (passes/partitioning.py) can put the
slices on different devices.

Requires ``shapes_inferred``; runs between fusion and partitioning, and only when more than one device is
given (the default pipeline puts it there in that case only). Ensures ``tensor_split_checked``: every kernel
the pass split was replaced, in the schedule, by ``k`` slices followed by one ``Concat`` per output, and the
graph computes the same function: a slice is the original op restricted to a range of output channels, each
output element is the same dot product as before (a backend may block the shorter GEMM differently, so sums
can round differently: the llvm target gives identical results on the zoo, numpy's BLAS agrees to 1e-7).
Every new value has its type (checked against the op's shape rule); the IR verifier accepts the result.
The kernels are first put in the chain order the partitioner cuts (:func:`sink_sources`).

What can be split (:func:`split_spec`; anything else is refused with a reason in the decision log):

- a plain ``Conv`` (group 1; weight, and bias if any, constant), ``Gemm`` (B constant; C constant or absent)
  or ``MatMul`` (B a constant of rank >= 2), or a ``graphc::FusedKernel`` holding exactly one such op followed
  by an epilogue of numpy-broadcasting elementwise ops (Relu, Add of a bias, Clip, ...) whose other operands
  are constants, or activations shaped like the output (a residual: each slice then reads its channel range
  of it through a ``Slice`` kernel of its own, placed right before the slice); every value after the complex
  op, and every kernel output, has the complex op's output shape.
  A "constant" may also be a weight made at run time by a ``ConstantOfShape`` of a constant shape (the light
  zoo models make their FC weights so, above the constant folder's size cap): each slice gets its own smaller
  ``ConstantOfShape`` right before it;
- the split axis is the output-channel axis: axis 1 of Conv (weight and bias sliced along axis 0) and of Gemm
  (B along axis 1, or 0 when ``transB``; C along its last axis when it spans N), the last axis of MatMul (B
  along its last axis). An epilogue constant is sliced along the axis aligned with the split axis when it
  spans it, and shared whole when it broadcasts (size 1, or fewer dims). The slices read the same input
  activation; their outputs are concatenated along the split axis. Splitting along K (partial sums added by a
  Sum) is not done: it would need the input activation sliced too and changes the summation order.

When it splits (all predictions use the partitioner's own cost model and chain DP, :func:`choose_partition`,
on trial copies of the graph; the real graph is changed only by an accepted trial):

- **capacity**: when no partition of whole kernels fits the devices' memory, every splittable kernel whose
  weights exceed half the smallest device budget is cut into slices of at most that size; if the partition
  still does not fit, a quarter, then an eighth. When none fits, the graph is left as it was and the
  partitioning pass reports the DeviceError;
- **bottleneck**: when the predicted bottleneck exceeds ``tensor_split_tolerance`` (1.02) x its lower bound
  ``max(total / stages, largest kernel)``, the splittable kernels nearest each stage boundary (one on each
  side), together or one alone, are cut into ``k = ceil(time / (1% of the bound))`` slices, k capped at 2, 4
  and ``tensor_split_max_slices`` (16) in turn; the trial with the best predicted throughput is kept when it
  improves on the current one by more than 1%. Up to four rounds.
  This is what lets the chain DP move part of a boundary kernel to the next stage.

Options: ``tensor_split`` ("auto", or False/"off" to never split), ``tensor_split_tolerance``,
``tensor_split_max_slices``. The decision with ``summary=True`` holds ``tensor_split``: the kernels split (name,
op, slices, axis, weight bytes, reason), the ones refused and why, and the lower bound of the graph before any
split; the partitioning pass copies it into ``report()["partition"]["tensor_split"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeviceError, OptionError
from ..ir.graph import Graph, Node, Value, captured_values
from ..ir.types import TensorType
from ..ops import FusionClass, lookup
from ..ops.inference import infer_node
from ..ops.registry import resolve_attrs
from .base import Pass, PassContext
from .registry import register_pass

COMPLEX_OPS = ("Conv", "Gemm", "MatMul")
CAPACITY_FRACTIONS = (0.5, 0.25, 0.125)
BOTTLENECK_ROUNDS = 4
#: a slice made for balance holds at most this share of the lower bound's time
GRANULARITY = 0.01
MIN_GAIN = 0.01


# ============================================================================================ what splits
@dataclass
class SplitSpec:
    """How to split one kernel: the output axis and, for each constant it reads, the axis to slice (None: the
    constant is shared whole by every slice)."""

    node: Node
    op: Node                        # the Conv/Gemm/MatMul (the node itself, or the one inside a FusedKernel)
    axis: int                       # split axis of the complex op's output (and of every kernel output)
    size: int                       # extent of that axis
    const_axes: dict[int, int | None] = field(default_factory=dict)  # id(constant Value) -> slice axis
    weight_bytes: int = 0           # bytes of the constants that get sliced
    #: body inputs of a FusedKernel fed by an activation its epilogue reads (a residual), shaped like the
    #: output: each slice reads that activation's channel range through a Slice kernel of its own
    activation_inputs: set[int] = field(default_factory=set)


class _Refused(Exception):
    pass


@dataclass
class _Generated:
    """A weight made at run time by a ``ConstantOfShape`` of a constant shape (the light zoo models make their
    big FC weights this way): it slices like a constant, each slice made by its own smaller ConstantOfShape."""

    node: Node
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _generated(v: Value) -> _Generated | None:
    p = v.producer
    if p is None or p.op_type != "ConstantOfShape" or p.domain not in ("", "ai.onnx") or p.graph is None \
            or p.graph.parent is not None or not p.inputs or p.inputs[0] is None or not p.inputs[0].is_constant:
        return None
    t = v.type
    if not isinstance(t, TensorType) or t.dtype is None or t.shape is None or not t.is_static:
        return None
    return _Generated(p, tuple(int(d) for d in t.shape), np.dtype(t.dtype))


def _root_weight(v: Value | None) -> "np.ndarray | _Generated | None":
    """What a root-graph value is as a weight: its array, a generated weight, or None (an activation)."""
    if v is None:
        return None
    if v.is_constant:
        return v.const
    return _generated(v)


def _const_of(v: Value | None, node: Node) -> "np.ndarray | _Generated | None":
    """The weight behind ``v``: a constant, a generated weight, or a FusedKernel body input fed by either."""
    if v is None:
        return None
    if v.is_constant:
        return v.const
    if node.op_type == "FusedKernel" and v.producer is None and v.graph is not node.graph:
        body = node.attrs["body"]
        if v in body.inputs:
            return _root_weight(node.inputs[body.inputs.index(v)])
        return None
    return _root_weight(v) if v.graph is node.graph else None


def _shape(v: Value | None) -> tuple | None:
    t = getattr(v, "type", None)
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _complex_axes(op: Node, consts: dict[int, int | None], kernel: Node) -> tuple[int, int]:
    """(output axis, its size) of a Conv/Gemm/MatMul, filling ``consts`` with its weights' slice axes."""
    opdef = lookup(op.domain, op.op_type)
    attrs = resolve_attrs(opdef, op)
    out = _shape(op.outputs[0])
    if out is None:
        raise _Refused("its output shape is unknown")

    def need_const(i: int, what: str) -> np.ndarray:
        v = op.inputs[i] if i < len(op.inputs) else None
        arr = _const_of(v, kernel)
        if arr is None:
            raise _Refused(f"its {what} is not a constant")
        return arr

    if op.op_type == "Conv":
        if int(attrs.get("group", 1)) != 1:
            raise _Refused("grouped convolution (slicing output channels would need the input sliced too)")
        w = need_const(1, "weight")
        consts[id(op.inputs[1])] = 0
        if len(op.inputs) > 2 and op.inputs[2] is not None:
            need_const(2, "bias")
            consts[id(op.inputs[2])] = 0
        return 1, int(w.shape[0])
    if op.op_type == "Gemm":
        b = need_const(1, "B")
        n_axis = 0 if int(attrs.get("transB", 0)) else 1
        consts[id(op.inputs[1])] = n_axis
        n = int(b.shape[n_axis])
        if len(op.inputs) > 2 and op.inputs[2] is not None:
            c = need_const(2, "C")
            consts[id(op.inputs[2])] = c.ndim - 1 if c.ndim >= 1 and c.shape[-1] == n and n > 1 else None
        return 1, n
    # MatMul
    b = need_const(1, "B")
    if b.ndim < 2:
        raise _Refused("MatMul with a 1-D B has no output channel axis")
    consts[id(op.inputs[1])] = b.ndim - 1
    return len(out) - 1, int(b.shape[-1])


def _epilogue_axes(node: Node, axis: int, out_shape: tuple, size: int, chain: set[int],
                   consts: dict[int, int | None], kernel: Node, activations: set[int]) -> None:
    """Check one epilogue node and fill ``consts`` with its constant operands' slice axes, ``activations``
    with the activations it reads besides the chain (each must be shaped like the output)."""
    opdef = lookup(node.domain, node.op_type)
    if opdef is None or opdef.fusion != FusionClass.ELEMENTWISE or node.domain not in ("", "ai.onnx"):
        raise _Refused(f"its epilogue holds {node.op_type}, which is not a broadcasting elementwise op")
    if "axis" in node.attrs or "broadcast" in node.attrs:
        raise _Refused(f"its epilogue {node.op_type} uses legacy axis broadcasting")
    for o in node.outputs:
        if o is not None and _shape(o) != out_shape:
            raise _Refused(f"its epilogue {node.op_type} changes the shape")
    rank = len(out_shape)
    for v in node.inputs:
        if v is None or id(v) in chain:
            continue
        arr = _const_of(v, kernel)
        if arr is None:
            if _shape(v) != out_shape:
                raise _Refused(f"its epilogue {node.op_type} reads an activation ({v.name}) not shaped like "
                               f"its output")
            activations.add(id(v))
            continue
        aligned = axis - (rank - arr.ndim)
        want = aligned if aligned >= 0 and arr.shape[aligned] == size and size > 1 else None
        if aligned >= 0 and arr.shape[aligned] not in (1, size):
            raise _Refused(f"its epilogue constant {v.name} does not broadcast along the split axis")
        if consts.get(id(v), want) != want:
            raise _Refused(f"constant {v.name} would be sliced two different ways")
        consts[id(v)] = want


def split_spec(node: Node) -> SplitSpec:
    """How ``node`` splits along its output channels; raises :class:`_Refused` (a reason) when it cannot."""
    if node.op_type in COMPLEX_OPS and node.domain in ("", "ai.onnx"):
        members, kernel = [node], node
    elif node.op_type == "FusedKernel" and node.domain == "graphc":
        body = node.attrs.get("body")
        if not isinstance(body, Graph) or captured_values(body):
            raise _Refused("its body reads values of the enclosing graph directly")
        members, kernel = list(body.nodes), node
    else:
        raise _Refused(f"{node.op_type} is not a Conv/Gemm/MatMul kernel")
    complex_ops = [m for m in members if m.op_type in COMPLEX_OPS and m.domain in ("", "ai.onnx")]
    if len(complex_ops) != 1:
        raise _Refused("it holds no Conv/Gemm/MatMul" if not complex_ops else "it holds several complex ops")
    op = complex_ops[0]
    if members.index(op) != 0:
        raise _Refused("ops run before its complex op (a prologue)")
    consts: dict[int, int | None] = {}
    axis, size = _complex_axes(op, consts, kernel)
    out_shape = _shape(op.outputs[0])
    if not isinstance(out_shape[axis], int) or out_shape[axis] != size:
        raise _Refused("its output-channel extent is not static")
    chain = {id(o) for o in op.outputs if o is not None}
    activations: set[int] = set()
    for m in members[1:]:
        _epilogue_axes(m, axis, out_shape, size, chain, consts, kernel, activations)
        chain.update(id(o) for o in m.outputs if o is not None)
    outputs = node.attrs["body"].outputs if node.op_type == "FusedKernel" else node.outputs
    for o in outputs:
        if o is not None and (id(o) not in chain or _shape(o) != out_shape):
            raise _Refused("one of its outputs is not shaped like the complex op's output")
    if node.op_type == "FusedKernel":
        # a constant a member reads must be a body input fed by a weight, or one of the body's own
        body_inputs = {id(v) for v in node.attrs["body"].inputs}
        for m in members:
            for v in m.inputs:
                if v is not None and id(v) not in chain and id(v) not in body_inputs and not v.is_constant:
                    raise _Refused(f"member {m.op_type} reads {v.name}, which is not an input of the kernel")
    weight_bytes = 0
    seen: set[int] = set()
    for m in members:
        for v in m.inputs:
            if v is not None and consts.get(id(v)) is not None and id(v) not in seen:
                seen.add(id(v))
                weight_bytes += int(_const_of(v, kernel).nbytes)
    return SplitSpec(node, op, axis, size, consts, weight_bytes, activations)


def try_split_spec(node: Node) -> SplitSpec | str:
    """:func:`split_spec`, or the reason it refuses."""
    try:
        return split_spec(node)
    except _Refused as exc:
        return str(exc)


# ============================================================================================ the rewrite
def slice_bounds(size: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous ranges tiling [0, size), sizes differing by at most one."""
    return [(i * size // k, (i + 1) * size // k) for i in range(k)]


def _slice_array(arr: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    index[axis] = slice(lo, hi)
    # a contiguous copy only when the slice is not one already (slices of axis 0 stay views of the weight)
    return np.ascontiguousarray(arr[tuple(index)])


def _typed(value: Value, like: Value, axis: int | None, extent: int | None) -> None:
    t = like.type
    if axis is not None and isinstance(t, TensorType) and t.shape is not None:
        shape = list(t.shape)
        shape[axis] = extent
        t = TensorType(t.dtype, tuple(shape))
    value.type = t


def _copy_node(target: Graph, node: Node, inputs: list[Value | None], axis: int | None, extent: int,
               index: int | None = None) -> Node:
    """``node`` rebuilt in ``target`` on ``inputs``; every output shaped like the original's with the split
    axis cut to ``extent``, then checked by the op's own shape rule."""
    names = [target.fresh_name(f"{o.name}_s") if o is not None else None for o in node.outputs]
    copy = target.add_node(node.op_type, inputs, domain=node.domain, attrs=dict(node.attrs),
                           name=target.fresh_name(f"{node.name or node.op_type.lower()}_s"), output_names=names,
                           index=index)
    copy.opset = node.opset
    for new, old in zip(copy.outputs, node.outputs):
        if new is not None:
            _typed(new, old, axis, extent)
    if node.op_type != "FusedKernel":
        infer_node(copy)  # the registry's rule must agree with the sliced type (it raises when it does not)
    return copy


def split_kernel(graph: Graph, spec: SplitSpec, k: int | list[tuple[int, int]], reason: str) -> list[Node]:
    """Replace ``spec.node`` in ``graph`` by slices and one Concat per output; returns the new nodes.

    ``k``: a number of equal slices, or the channel ranges themselves (contiguous, tiling [0, size)). The
    Concat outputs take over the original outputs' names (graph outputs keep theirs) and uses."""
    node = spec.node
    bounds = slice_bounds(spec.size, k) if isinstance(k, int) else [(int(a), int(b)) for a, b in k]
    k = len(bounds)
    if k < 2 or bounds[0][0] != 0 or bounds[-1][1] != spec.size or any(
            a >= b for a, b in bounds) or any(x[1] != y[0] for x, y in zip(bounds, bounds[1:])):
        raise ValueError(f"cannot cut the {spec.size} output channels of {node.name!r} into ranges {bounds}")
    info = {"of": node.name, "op": spec.op.op_type, "slices": k, "axis": spec.axis, "reason": reason}
    sliced_consts: dict[tuple[int, int], Value] = {}

    def outer_input(v: Value | None, ax: int | None, lo: int, hi: int, s: int, index: int) -> Value | None:
        """The slice's version of a root-graph value: a weight sliced along ``ax`` becomes a new initializer, or
        a new ConstantOfShape inserted at ``index`` for a generated weight (one per slice); anything else is
        shared."""
        weight = _root_weight(v) if ax is not None else None
        if weight is None:
            return v
        key = (id(v), s)
        if key not in sliced_consts:
            if isinstance(weight, _Generated):
                shape = list(weight.shape)
                shape[ax] = hi - lo
                dims = graph.add_initializer(graph.fresh_name(f"{v.name}_shape_s{s}"), np.array(shape, np.int64))
                gen = _copy_node(graph, weight.node, [dims], ax, hi - lo, index=index)
                gen.meta["tensor_split"] = {**info, "slice": s, "range": [lo, hi], "weight": True}
                sliced_consts[key] = gen.outputs[0]
            else:
                sliced_consts[key] = graph.add_initializer(graph.fresh_name(f"{v.name}_s{s}"),
                                                           _slice_array(weight, ax, lo, hi))
        return sliced_consts[key]

    slices: list[Node] = []
    for s, (lo, hi) in enumerate(bounds):
        at = graph.nodes.index(node)  # slices (and their generated weights) go before the original, in order
        if node.op_type == "FusedKernel":
            new = _split_fused(graph, spec, lo, hi, s, outer_input)
        else:
            ins = [outer_input(v, spec.const_axes.get(id(v)) if v is not None else None, lo, hi, s, at)
                   for v in node.inputs]
            new = _copy_node(graph, node, ins, spec.axis, hi - lo, index=graph.nodes.index(node))
        new.meta.update({key: val for key, val in node.meta.items() if key != "tensor_split"})
        new.meta["tensor_split"] = {**info, "slice": s, "range": [lo, hi]}
        slices.append(new)
    concats: list[Node] = []
    for j, old in enumerate(node.outputs):
        if old is None:
            continue
        name = old.name
        old.name = graph.fresh_name(f"{name}_unsplit")
        parts = [sl.outputs[j] for sl in slices]
        cat = graph.add_node("Concat", parts, attrs={"axis": spec.axis}, name=graph.fresh_name(f"{node.name}_concat"),
                             output_names=[name], index=graph.nodes.index(node))
        cat.outputs[0].type = old.type
        infer_node(cat)
        cat.meta["tensor_split"] = {**info, "concat": True}
        old.replace_all_uses_with(cat.outputs[0])
        _replace_in_subgraph_outputs(graph, old, cat.outputs[0])
        concats.append(cat)
    read = [v for v in node.inputs if v is not None]
    graph.remove_node(node)
    _drop_unread(graph, read)
    return slices + concats


def _drop_unread(graph: Graph, values: list[Value]) -> None:
    """Weights, and ConstantOfShape nodes making weights, that only the split kernel read: their slices replace
    them."""
    for v in values:
        if v.uses or any(o is v for o in graph.outputs):
            continue
        if v.is_constant and graph.initializers.get(v.name) is v:
            del graph.initializers[v.name]
            v.graph = None
        elif _generated(v) is not None and v.producer in graph.nodes:
            producer = v.producer
            shape = producer.inputs[0]
            graph.remove_node(producer)
            _drop_unread(graph, [shape])


def _replace_in_subgraph_outputs(graph: Graph, old: Value, new: Value) -> None:
    for n in graph.walk():
        for sub in n.subgraphs():
            if any(o is old for o in sub.outputs):
                sub.outputs = [new if o is old else o for o in sub.outputs]


def _split_fused(graph: Graph, spec: SplitSpec, lo: int, hi: int, s: int, outer_input) -> Node:
    """One slice of a FusedKernel: a new body whose weights (body inputs fed by weights, or body initializers)
    are sliced where ``spec`` says, every member copied, types cut along the split axis."""
    node = spec.node
    body: Graph = node.attrs["body"]
    new_body = Graph(graph.fresh_name(f"{body.name}_s{s}"), opsets=body.opsets, parent=graph)
    mapping: dict[int, Value] = {}
    kernel_inputs = []
    sliced: dict[int, Value] = {}  # body input of a residual -> the body input of its channel slice
    for v, outer in zip(body.inputs, node.inputs):
        # a body input fed by a weight is sliced like the weight (the axis is recorded for the body input)
        ax = spec.const_axes.get(id(v)) if _root_weight(outer) is not None else None
        residual = id(v) in spec.activation_inputs and _root_weight(outer) is None
        if not residual or any(x is v for x in spec.op.inputs):  # the complex op reads it whole
            fed = outer_input(outer, ax, lo, hi, s, graph.nodes.index(node))
            new_in = new_body.add_input(graph.fresh_name(f"{v.name}_s{s}"))
            new_in.type = fed.type if fed is not None else v.type
            mapping[id(v)] = new_in
            kernel_inputs.append(fed)
        if residual:
            fed = _slice_activation(graph, outer, spec.axis, lo, hi, s, graph.nodes.index(node), node.name)
            new_in = new_body.add_input(graph.fresh_name(f"{v.name}_part_s{s}"))
            new_in.type = fed.type
            sliced[id(v)] = new_in
            kernel_inputs.append(fed)
    for name, v in body.initializers.items():
        ax = spec.const_axes.get(id(v))
        arr = v.const if ax is None else _slice_array(v.const, ax, lo, hi)
        mapping[id(v)] = new_body.add_initializer(graph.fresh_name(f"{name}_s{s}"), arr)
    for m in body.nodes:
        # the epilogue reads its channels of a residual; the complex op reads its input whole
        table = mapping if m is spec.op else {**mapping, **sliced}
        ins = [table.get(id(x), x) if x is not None else None for x in m.inputs]
        copy = _copy_node(new_body, m, ins, spec.axis, hi - lo)
        for new, old in zip(copy.outputs, m.outputs):
            if old is not None:
                mapping[id(old)] = new
    new_body.outputs = [mapping[id(o)] for o in body.outputs]
    attrs = {**node.attrs, "body": new_body}
    names = [graph.fresh_name(f"{o.name}_s{s}") if o is not None else None for o in node.outputs]
    kernel = graph.add_node("FusedKernel", kernel_inputs, domain="graphc", attrs=attrs,
                            name=graph.fresh_name(f"{node.name}_s{s}"), output_names=names,
                            index=graph.nodes.index(node))
    kernel.opset = node.opset
    for new, inner in zip(kernel.outputs, new_body.outputs):
        if new is not None:
            new.type = inner.type
    return kernel


def _slice_activation(graph: Graph, value: Value, axis: int, lo: int, hi: int, s: int, index: int,
                      of: str) -> Value:
    """A ``Slice`` kernel inserted at ``index`` that reads channels [lo, hi) of ``value`` along ``axis``: the
    slice of a kernel whose epilogue adds a residual reads only its own channels of the residual (a copy of
    1/k of it), so that the slice can sit on another device than its siblings."""
    where = {"name": graph.fresh_name(f"{value.name}_slice_s{s}"),
             "output_names": [graph.fresh_name(f"{value.name}_s{s}")], "index": index}
    if graph.root_opset("") < 10:  # Slice-1: the ranges are attributes
        node = graph.add_node("Slice", [value], attrs={"starts": [lo], "ends": [hi], "axes": [axis]}, **where)
    else:
        consts = [graph.add_initializer(graph.fresh_name(f"{value.name}_{what}_s{s}"), np.array([n], np.int64))
                  for what, n in (("starts", lo), ("ends", hi), ("axes", axis))]
        node = graph.add_node("Slice", [value, *consts], **where)
    _typed(node.outputs[0], value, axis, hi - lo)
    infer_node(node)
    node.meta["tensor_split"] = {"of": of, "slice": s, "range": [lo, hi], "activation": value.name}
    return node.outputs[0]


# ============================================================================================ the pass
def _bool_option(value: Any) -> bool:
    if value in (None, True, "auto", "on"):
        return True
    if value in (False, "off", "never"):
        return False
    raise OptionError(f"tensor_split must be 'auto' (the default) or False/'off', got {value!r}")


def clone(graph: Graph) -> Graph:
    """A structural copy for trials: nodes and values are new, weight arrays are shared (not copied)."""
    from ..ir.serialize import graph_from_json, graph_to_json

    doc, weights = graph_to_json(graph)
    return graph_from_json(doc, weights)


def apply_splits(graph: Graph, plan: dict[str, tuple[Any, str]]) -> list[dict]:
    """Split the kernels named in ``plan`` (name -> (slice count or channel ranges, reason)); returns one record
    per kernel split."""
    by_name = {n.name: n for n in graph.nodes}
    records = []
    for name, (k, reason) in plan.items():
        spec = split_spec(by_name[name])
        bounds = slice_bounds(spec.size, max(2, min(k, spec.size))) if isinstance(k, int) else list(k)
        split_kernel(graph, spec, bounds, reason)
        records.append({"kernel": name, "op": spec.op.op_type, "slices": len(bounds), "axis": spec.axis,
                        "channels": [list(b) for b in bounds], "weight_bytes": spec.weight_bytes,
                        "reason": reason})
    return records


@register_pass
class TensorSplit(Pass):
    """Tensor splitting: a Conv/Gemm/MatMul kernel too big for a device, or at a badly balanced stage
    boundary, becomes k output-channel slices plus a Concat, so the partitioner can spread it over devices.

    Requires ``shapes_inferred``; ensures ``tensor_split_checked``. Does nothing with one device. See the module
    docstring for the rules.
    """

    name = "tensor_split"
    requires = frozenset({"shapes_inferred"})
    ensures = frozenset({"tensor_split_checked"})
    options = {"tensor_split": "auto", "tensor_split_tolerance": 1.02, "tensor_split_max_slices": 16}

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        from .partitioning import partition_request

        if not _bool_option(ctx.option("tensor_split", "auto")):
            return False
        request = partition_request(ctx)
        if request is None or not graph.nodes:
            return False
        tolerance = ctx.option("tensor_split_tolerance", 1.02)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 1:
            raise OptionError(f"tensor_split_tolerance must be a number >= 1, got {tolerance!r}")
        max_slices = ctx.option("tensor_split_max_slices", 16)
        if isinstance(max_slices, bool) or not isinstance(max_slices, int) or max_slices < 2:
            raise OptionError(f"tensor_split_max_slices must be an integer >= 2, got {max_slices!r}")
        from .partitioning import sink_sources

        moved = sink_sources(graph)  # the chain order the partitioner will cut (it does the same, a no-op then)
        splittable, refused = _survey(graph)
        if not splittable:
            self.log(ctx, "no kernel can be split", summary=True,
                     tensor_split=self._summary([], refused, ["no splittable kernel"], None, None))
            return moved
        original = clone(graph)  # weights shared: for the lower bound over whole kernels, reported next to ours
        records: list[dict] = []
        notes: list[str] = []
        # under a user's memory cap the stages' planned arenas are checked in every trial, not only estimated
        exact = any(c < d.memory_bytes for c, d in zip(request.caps, request.devset.devices))
        whole = _trial(graph, request, exact)
        current = whole
        if isinstance(whole, DeviceError):
            current = self._for_capacity(graph, request, splittable, records, notes)
            if current is None:
                self.log(ctx, "no split makes the partition fit: " + "; ".join(notes), summary=True,
                         tensor_split=self._summary(records, refused, notes, None, None))
                return moved
            exact = True  # memory is binding: later trials are checked stage by stage too
            splittable, _ = _survey(graph)
        current = self._for_balance(graph, request, current, splittable, tolerance, max_slices, records, notes,
                                     exact)
        for r in records:
            self.log(ctx, f"split {r['op']} {r['kernel']!r} into {r['slices']} slices along axis {r['axis']}: "
                          f"{r['reason']}", **r)
        unsplit_bound = _bound_of(original, current, request) if records else current.lower_bound_s
        self.log(ctx, f"{len(records)} kernel(s) split" if records else "no kernel split: " + "; ".join(notes),
                 summary=True, tensor_split=self._summary(records, refused, notes, unsplit_bound, current))
        return moved or bool(records)

    # -- capacity -------------------------------------------------------------------------------------------
    def _for_capacity(self, graph, request, splittable, records, notes):
        budget = min(request.caps)
        for fraction in CAPACITY_FRACTIONS:
            limit = fraction * budget
            plan = {name: (math.ceil(s.weight_bytes / limit),
                           f"capacity: its {s.weight_bytes:,} weight bytes exceed {fraction:g} x the "
                           f"{int(budget):,}-byte device budget, so no stage of whole kernels holds it")
                    for name, s in splittable.items() if s.weight_bytes > limit}
            plan = {name: (min(k, splittable[name].size), why) for name, (k, why) in plan.items()}
            if not plan:
                notes.append(f"capacity: no splittable kernel has more than {fraction:g} x the device budget "
                             "in weights")
                break
            trial = clone(graph)
            apply_splits(trial, plan)
            result = _trial(trial, request, exact=True)
            if isinstance(result, DeviceError):
                notes.append(f"capacity: slices of at most {fraction:g} x the budget still do not fit ({result})")
                continue
            records.extend(apply_splits(graph, plan))
            notes.append(f"capacity: the whole-kernel partition does not fit; slices of at most {fraction:g} x the "
                         "device budget do")
            return result
        return None

    # -- balance --------------------------------------------------------------------------------------------
    def _for_balance(self, graph, request, current, splittable, tolerance, max_slices, records, notes, exact):
        for _ in range(BOTTLENECK_ROUNDS):
            bottleneck, bound = current.evaluation.bottleneck_s, current.lower_bound_s
            if bound <= 0 or bottleneck <= tolerance * bound:
                notes.append(f"balance: bottleneck {bottleneck / bound if bound else 1:.3f} x its lower bound, "
                             f"within {tolerance:g}")
                break
            picks = _boundary_kernels(current, splittable)
            if not picks:
                notes.append("balance: no splittable kernel next to a stage boundary")
                break
            best = None
            for plan in _balance_plans(current, picks, splittable, max_slices):
                trial = clone(graph)
                apply_splits(trial, plan)
                result = _trial(trial, request, exact)
                if not isinstance(result, DeviceError) and (best is None or result.throughput > best[1].throughput):
                    best = (plan, result)
            if best is None or best[1].throughput <= current.throughput * (1 + MIN_GAIN):
                notes.append(f"balance: splitting {', '.join(dict.fromkeys(p[0] for p in picks))} is not "
                             "predicted to help")
                break
            plan, result = best
            records.extend(apply_splits(graph, plan))
            for name in plan:
                splittable.pop(name, None)
            current = result
        return current

    @staticmethod
    def _summary(records, refused, notes, unsplit_bound, current) -> dict:
        out = {"split": records, "refused": refused, "notes": notes,
               "unsplit_lower_bound_s": unsplit_bound}
        if current is not None and not isinstance(current, DeviceError):
            out["predicted_bottleneck_s"] = current.evaluation.bottleneck_s
        return out


def _bound_of(graph: Graph, choice, request) -> float:
    """The partitioner's lower bound for ``graph`` in the configuration ``choice`` settled on (same devices,
    same micro-batch binding)."""
    from .partitioning import Model, graph_facts

    return Model(graph_facts(graph, choice.model.f.bindings), request.devset).lower_bound(choice.group)


def _survey(graph: Graph) -> tuple[dict[str, SplitSpec], dict[str, str]]:
    """(kernels that can be split, by name; Conv/Gemm/MatMul kernels that cannot, with the reason). Slices made
    by an earlier split are not split again."""
    splittable, refused = {}, {}
    for n in graph.nodes:
        if "tensor_split" in n.meta:
            continue
        spec = try_split_spec(n)
        if isinstance(spec, SplitSpec):
            splittable[n.name] = spec
        elif n.op_type in COMPLEX_OPS or n.op_type == "FusedKernel" and "holds no" not in spec:
            refused[n.name] = spec
    return splittable, refused


def _trial(graph: Graph, request, exact: bool = False):
    """The partitioner's choice for ``graph`` (or the DeviceError saying it does not fit)."""
    from .partitioning import choose_partition, exact_stage_peaks

    try:
        return choose_partition(graph, request.devset, caps=request.caps, **request.kwargs,
                                exact_memory=(lambda c: exact_stage_peaks(graph, c)) if exact else None)
    except DeviceError as exc:
        return exc


def _balance_plans(choice, picks: list[tuple[str, int, str]], splittable: dict[str, SplitSpec], max_slices: int
                   ) -> list[dict[str, tuple[Any, str]]]:
    """The splits weighed for balance, for the boundary kernels together and each alone:

    - two uneven slices, cut where the later (or earlier) part holds the share of the kernel's time that would
      even out the two stages of its boundary: the DP can then cut between them (one more launch, no more);
    - ``ceil(time / (1% of the bound))`` equal slices, capped at 2, 4, ... ``max_slices``: finer steps for
      the DP, paid with more launches and re-reads of the input.

    The partitioner's cost model decides between them."""
    ev = choice.evaluation
    bottleneck, bound = ev.bottleneck_s, choice.lower_bound_s
    times = choice.model.times(choice.devices[0])
    position = {n.name: i for i, n in enumerate(choice.model.f.nodes)}
    caps = sorted({min(2 ** e, max_slices) for e in range(1, max_slices.bit_length() + 1)} | {max_slices})
    names = list(dict.fromkeys(name for name, _, _ in picks))
    groups = [names] + ([[n] for n in names] if len(names) > 1 else [])

    def why(t: float) -> str:
        return (f"balance: next to a stage boundary, {1e3 * t:.3f} ms, while the bottleneck is "
                f"{bottleneck / bound:.3f} x its lower bound")

    uneven: dict[str, list[tuple[int, int]]] = {}
    for name, boundary, side in picks:
        t, size = float(times[position[name]]), splittable[name].size
        here, there = (boundary, boundary + 1) if side == "tail" else (boundary + 1, boundary)
        excess = ev.stages[here].time_s - ev.stages[there].time_s
        if excess <= 0 or t <= 0 or name in uneven:
            continue
        moved = min(0.95, excess / (2 * t))
        cut = size - round(size * moved) if side == "tail" else round(size * moved)
        if 0 < cut < size:
            uneven[name] = [(0, cut), (cut, size)]
    plans, seen = [], set()

    def add(plan: dict) -> None:
        key = tuple(sorted((n, str(k)) for n, (k, _) in plan.items()))
        if plan and key not in seen:
            seen.add(key)
            plans.append(plan)

    for group in groups:
        add({n: (uneven[n], why(float(times[position[n]]))) for n in group if n in uneven})
        for cap in caps:
            add({n: (max(2, min(cap, splittable[n].size, math.ceil(float(times[position[n]]) / (GRANULARITY * bound)))),
                     why(float(times[position[n]]))) for n in group})
    return plans


def _boundary_kernels(choice, splittable: dict[str, SplitSpec]) -> list[tuple[str, int, str]]:
    """(name, boundary s, "tail" | "head"): the splittable kernels nearest each boundary between stages s and
    s + 1, the last one before it ("tail", on stage s or earlier) and the first one after it ("head")."""
    nodes = choice.model.f.nodes
    assign = choice.assign
    picks: list[tuple[str, int, str]] = []
    for s in range(choice.stages - 1):
        before = [i for i, a in enumerate(assign) if a <= s]
        after = [i for i, a in enumerate(assign) if a > s]
        for side, order in (("tail", reversed(before)), ("head", after)):
            for i in order:
                if nodes[i].name in splittable:
                    picks.append((nodes[i].name, s, side))
                    break
    return picks


__all__ = ["TensorSplit", "SplitSpec", "split_spec", "try_split_spec", "split_kernel", "slice_bounds",
           "apply_splits", "clone"]
