"""Ops: sequences (Sequence*, ConcatFromSequence, SplitToSequence, SequenceMap) and optionals (Optional*).

Runtime representation: a sequence is a Python ``list`` of np.ndarrays and an empty optional is ``None`` (a
present optional is just its element). Sequence ops never mutate their input list: values may be shared, e.g.
by a Loop that carries a sequence from one iteration to the next.

Every op here that produces a sequence or an optional returns a tuple of outputs, so that a list (a sequence)
or None (an empty optional) is never mistaken for "several outputs" or "no output".
"""

from __future__ import annotations

import numpy as np

from ..ir.types import OptionalType, SequenceType, TensorType, dtype_from_onnx
from .registry import FusionClass, OpContext, OpDef, register


def _position(ctx: OpContext, position: np.ndarray | None, length: int, default: int, inclusive_end: bool) -> int:
    """A sequence index, negative values counting from the end; ``inclusive_end`` allows ``length`` (insert)."""
    if position is None:
        return default
    pos = int(np.asarray(position).reshape(()))
    upper = length if inclusive_end else length - 1
    if not -length <= pos <= upper:
        raise ctx.fail(f"position {pos} out of range for a sequence of {length} tensor(s)")
    return pos + length if pos < 0 else pos


def _tensor_type_from_proto(tp) -> TensorType | None:
    """The TensorType an ONNX TypeProto attribute (Optional's ``type``) describes, when it describes a tensor."""
    if tp is None or tp.WhichOneof("value") != "tensor_type":
        return None
    return TensorType(dtype_from_onnx(tp.tensor_type.elem_type))


class _SequenceOp(OpDef):
    fusion = FusionClass.OPAQUE


@register
class SequenceEmpty(_SequenceOp):
    op_type = "SequenceEmpty"

    def compute(self, ctx, *inputs):
        return ([],)

    def infer(self, ctx):
        dtype = ctx.attr("dtype")
        return [SequenceType(TensorType(dtype_from_onnx(dtype) if dtype is not None else np.float32))]


@register
class SequenceConstruct(_SequenceOp):
    op_type = "SequenceConstruct"

    def compute(self, ctx, *inputs):
        return (list(inputs),)

    def infer(self, ctx):
        t = ctx.input_type(0)
        return [SequenceType(TensorType(t.dtype) if t is not None else None)]


@register
class SequenceInsert(_SequenceOp):
    op_type = "SequenceInsert"

    def compute(self, ctx, seq, tensor, position=None):
        pos = _position(ctx, position, len(seq), len(seq), inclusive_end=True)
        return (seq[:pos] + [tensor] + seq[pos:],)

    def infer(self, ctx):
        t = ctx.input_type(1)
        return [SequenceType(TensorType(t.dtype) if t is not None else None)]


@register
class SequenceAt(_SequenceOp):
    op_type = "SequenceAt"

    def compute(self, ctx, seq, position):
        return seq[_position(ctx, position, len(seq), 0, inclusive_end=False)]


@register
class SequenceErase(_SequenceOp):
    op_type = "SequenceErase"

    def compute(self, ctx, seq, position=None):
        if not seq:
            raise ctx.fail("cannot erase from an empty sequence")
        pos = _position(ctx, position, len(seq), len(seq) - 1, inclusive_end=False)
        return (seq[:pos] + seq[pos + 1:],)


@register
class SequenceLength(_SequenceOp):
    op_type = "SequenceLength"

    def compute(self, ctx, seq):
        return np.asarray(len(seq), dtype=np.int64)

    def infer(self, ctx):
        return [TensorType(np.int64, ())]


@register
class ConcatFromSequence(_SequenceOp):
    """Concatenate along ``axis``, or stack along a new ``axis`` when ``new_axis`` is 1."""

    op_type = "ConcatFromSequence"
    attrs = {"new_axis": 0}

    def compute(self, ctx, seq):
        axis = ctx.attr("axis")
        if not seq:
            raise ctx.fail("cannot concatenate an empty sequence")
        if ctx.attr("new_axis", 0):
            return np.stack(seq, axis=axis)
        return np.concatenate(seq, axis=axis)


@register
class SplitToSequence(_SequenceOp):
    """Split along ``axis`` into pieces: of the sizes listed by 1-D ``split``, of ``split`` elements each (the
    last one smaller) for a scalar ``split``, or of one element each without ``split`` (then ``keepdims=0``
    drops the split axis)."""

    op_type = "SplitToSequence"
    attrs = {"axis": 0, "keepdims": 1}

    def compute(self, ctx, x, split=None):
        axis = ctx.attr("axis", 0)
        axis = axis + x.ndim if axis < 0 else axis
        length = x.shape[axis]
        if split is None:
            pieces = np.split(x, length, axis=axis) if length else []
            if not ctx.attr("keepdims", 1):
                pieces = [np.squeeze(p, axis=axis) for p in pieces]
            return (pieces,)
        split = np.asarray(split, dtype=np.int64)
        if split.ndim == 0:
            step = int(split)
            if step <= 0:
                raise ctx.fail(f"split size must be positive, got {step}")
            bounds = list(range(step, length, step))
        else:
            if split.sum() != length or (split < 0).any():
                raise ctx.fail(f"split sizes {split.tolist()} do not add up to the axis length {length}")
            bounds = np.cumsum(split)[:-1].tolist()
        return (np.split(x, bounds, axis=axis),)

    def infer(self, ctx):
        t = ctx.input_type(0)
        return [SequenceType(TensorType(t.dtype) if t is not None else None)]


@register
class SequenceMap(_SequenceOp):
    """Run ``body`` once per element of the input sequence. Additional inputs that are sequences are indexed
    alongside (they must have the same length); tensors are passed whole to every iteration."""

    op_type = "SequenceMap"

    def compute(self, ctx, seq, *additional):
        body = ctx.attrs["body"]
        for extra in additional:
            if isinstance(extra, list) and len(extra) != len(seq):
                raise ctx.fail(f"sequence inputs have different lengths ({len(seq)} and {len(extra)})")
        results = [[] for _ in body.outputs]
        for i, item in enumerate(seq):
            args = [item] + [extra[i] if isinstance(extra, list) else extra for extra in additional]
            for collected, value in zip(results, ctx.run_subgraph(body, args)):
                collected.append(value)
        return tuple(results)


@register
class Optional(_SequenceOp):
    """Wrap the input in an optional, or make an empty optional (of the ``type`` attribute) without input."""

    op_type = "Optional"

    def compute(self, ctx, x=None):
        return (x,)

    def infer(self, ctx):
        if ctx.num_inputs and ctx.node.inputs[0] is not None:
            return [OptionalType(ctx.node.inputs[0].type)]
        return [OptionalType(_tensor_type_from_proto(ctx.attr("type")))]


@register
class OptionalHasElement(_SequenceOp):
    op_type = "OptionalHasElement"

    def compute(self, ctx, x=None):
        return np.asarray(x is not None)

    def infer(self, ctx):
        return [TensorType(np.bool_, ())]


@register
class OptionalGetElement(_SequenceOp):
    """The element of a non-empty optional; since opset 18 a plain tensor or sequence passes through."""

    op_type = "OptionalGetElement"

    def compute(self, ctx, x):
        if x is None:
            raise ctx.fail("the optional input is empty")
        return (x,)

    def infer(self, ctx):
        t = ctx.node.inputs[0].type if ctx.num_inputs and ctx.node.inputs[0] is not None else None
        if isinstance(t, OptionalType):
            return [t.elem]
        return [t] if isinstance(t, (TensorType, SequenceType)) else None
